"""The on-disk cache of compiled graphs: per software versions and GPU identity, safe across processes.

Layout::

    <root>/v1/<versions>/<identity>/<key[:2]>/<key>.entry   one file per compiled graph
                                              <key>.lock    its lock (filelock)

``versions`` names torch, torch_tensorrt and TensorRT; ``identity`` the GPU model and compute
capability (``sm90-nvidia-h100-80gb-hbm3``) or ``cpu``, so an entry is only ever read by the
library versions and the kind of GPU it was built for. An entry is a small header (magic, format,
payload length, SHA-256 of the payload, JSON metadata) and the delegate's payload. Writes go to a
temporary file that is renamed into place, so readers never see a torn entry; a checksum mismatch
marks an entry corrupt, and it is removed and rebuilt. Eviction removes the least recently used
entries (a hit refreshes an entry's mtime) until the total fits the size limit, skipping entries
another process holds. Entries hold pickled objects: keep the directory private to the user.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import filelock

__all__ = ["DiskCache", "Entry", "CorruptEntry", "identity_of", "slug", "LAYOUT_VERSION"]

LAYOUT_VERSION = "v1"
_MAGIC = b"TRTMDV1\n"
_HEADER = struct.Struct("<8sQ32sI")  # magic, payload length, sha256(payload), metadata length
_SUFFIX = ".entry"


class CorruptEntry(Exception):
    """An entry failed its checksum or could not be read whole."""


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-") or "unknown"


def identity_of(device: Any) -> str:
    """The GPU identity an engine is valid for: compute capability and model name; or 'cpu'."""
    import torch

    device = torch.device(device)
    if device.type != "cuda":
        return slug(device.type)
    props = torch.cuda.get_device_properties(device)
    return f"sm{props.major}{props.minor}-{slug(props.name)}"


@dataclass(frozen=True)
class Entry:
    path: Path
    namespace: str
    key: str
    size: int
    last_used: float
    meta: dict


class DiskCache:
    """A directory of entries with per-entry locks; every method may raise OSError."""

    def __init__(self, root: str | os.PathLike[str], size_limit: int) -> None:
        self.root = Path(root)
        self.size_limit = size_limit

    # -- paths -----------------------------------------------------------------------------
    def namespace(self, versions: dict[str, str], identity: str) -> str:
        label = "_".join(f"{slug(k)}-{slug(v)}" for k, v in sorted(versions.items()))
        return f"{LAYOUT_VERSION}/{label}/{slug(identity)}"

    def _path(self, namespace: str, key: str) -> Path:
        return self.root / namespace / key[:2] / (key + _SUFFIX)

    def lock(self, namespace: str, key: str, timeout: float = -1) -> filelock.BaseFileLock:
        path = self._path(namespace, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        return _lock_for(path, timeout)

    # -- entries ---------------------------------------------------------------------------
    def read(self, namespace: str, key: str) -> tuple[bytes, dict] | None:
        """(payload, metadata), None when absent; CorruptEntry when damaged (the caller removes it)."""
        path = self._path(namespace, key)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        payload, meta = _decode(data)
        os.utime(path)  # a hit counts as a use for LRU eviction
        return payload, meta

    def write(self, namespace: str, key: str, payload: bytes, meta: dict) -> Path:
        path = self._path(namespace, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{key[:16]}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(_encode(payload, {**meta, "key": key, "created": time.time()}))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        return path

    def remove(self, namespace: str, key: str) -> None:
        try:
            self._path(namespace, key).unlink()
        except FileNotFoundError:
            pass

    def entries(self) -> Iterator[Entry]:
        base = self.root / LAYOUT_VERSION
        if not base.is_dir():
            return
        for path in base.glob(f"*/*/*/*{_SUFFIX}"):
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            namespace = str(path.parent.parent.relative_to(self.root))
            yield Entry(path, namespace, path.stem, stat.st_size, stat.st_mtime, _peek_meta(path))

    def total_size(self) -> int:
        return sum(e.size for e in self.entries())

    def evict(self, size_limit: int | None = None, keep: set[Path] | None = None) -> list[Entry]:
        """Remove least recently used entries until the total fits; skip locked or kept ones."""
        limit = self.size_limit if size_limit is None else size_limit
        entries = sorted(self.entries(), key=lambda e: e.last_used)
        total = sum(e.size for e in entries)
        removed = []
        for entry in entries:
            if total <= limit:
                break
            if keep and entry.path in keep:
                continue
            try:
                with _lock_for(entry.path, 0):
                    entry.path.unlink(missing_ok=True)
            except filelock.Timeout:
                continue  # another process is building or loading it
            total -= entry.size
            removed.append(entry)
        return removed

    def clear(self) -> int:
        count = 0
        for entry in list(self.entries()):
            entry.path.unlink(missing_ok=True)
            count += 1
        return count


def _lock_for(entry_path: Path, timeout: float) -> filelock.BaseFileLock:
    return filelock.FileLock(str(entry_path.with_suffix(".lock")), timeout=timeout)


def _encode(payload: bytes, meta: dict) -> bytes:
    meta_bytes = json.dumps(meta, sort_keys=True, default=str).encode()
    header = _HEADER.pack(_MAGIC, len(payload), hashlib.sha256(payload).digest(), len(meta_bytes))
    return header + meta_bytes + payload


def _decode(data: bytes) -> tuple[bytes, dict]:
    if len(data) < _HEADER.size:
        raise CorruptEntry("truncated header")
    magic, length, digest, meta_length = _HEADER.unpack_from(data)
    if magic != _MAGIC:
        raise CorruptEntry("not a trt_multidev cache entry")
    start = _HEADER.size + meta_length
    payload = data[start:]
    if len(payload) != length:
        raise CorruptEntry(f"truncated: {len(payload)} of {length} payload bytes")
    if hashlib.sha256(payload).digest() != digest:
        raise CorruptEntry("checksum mismatch")
    try:
        meta = json.loads(data[_HEADER.size:start])
    except ValueError as exc:
        raise CorruptEntry(f"unreadable metadata ({exc})") from None
    return payload, meta


def _peek_meta(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            head = f.read(_HEADER.size)
            if len(head) < _HEADER.size:
                return {}
            magic, _, _, meta_length = _HEADER.unpack(head)
            if magic != _MAGIC:
                return {}
            return json.loads(f.read(meta_length))
    except (OSError, ValueError):
        return {}
