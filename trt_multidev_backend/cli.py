"""`trt-multidev` / `python -m trt_multidev_backend`: what is installed, what is in effect, a demo."""

from __future__ import annotations

import argparse
import errno
import importlib.util
import importlib.metadata
import logging
import os
import stat
import sys
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

# torch warns at import when numpy is missing; no command needs numpy, so the warning is noise
# here. Only this message is filtered, and only in the command-line process.
warnings.filterwarnings("ignore", message="Failed to initialize NumPy", category=UserWarning)

import torch  # noqa: E402  (after the filter above)

from ._version import __version__  # noqa: E402
from . import progress  # noqa: E402
from .settings import SettingsError, resolve_settings, unknown_env_vars  # noqa: E402

if TYPE_CHECKING:
    from .diskcache import DiskCache

__all__ = ["main"]

_DISTRIBUTIONS = (
    ("torch", ("torch",)),
    ("torch_tensorrt", ("torch-tensorrt", "torch-tensorrt-rtx")),
    ("tensorrt", ("tensorrt", "tensorrt-cu12", "tensorrt-cu13", "tensorrt-rtx", "tensorrt-rtx-cu13-bindings")),
)


def _version_of(names: Sequence[str]) -> str:
    for name in names:
        try:
            return f"{importlib.metadata.version(name)} ({name})"
        except importlib.metadata.PackageNotFoundError:
            continue
    return "not installed"


def _gpus() -> list[str]:
    if not torch.cuda.is_available():
        build = "CPU-only build of torch" if torch.version.cuda is None else f"CUDA {torch.version.cuda}, no visible GPU"
        return [f"none ({build})"]
    rows = []
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        rows.append(f"cuda:{i}  {p.name}  SM {p.major}.{p.minor}  {p.total_memory / 2**30:.1f} GiB")
    return rows


def _table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def cmd_info(_: argparse.Namespace) -> int:
    print(f"trt-multidev-backend {__version__}")
    for label, names in _DISTRIBUTIONS:
        print(f"{label:15} {_version_of(names)}")
    print("GPUs:")
    for row in _gpus():
        print("  " + row)
    from .device import current_cuda_device

    if torch.cuda.is_available() or os.environ.get("LOCAL_RANK"):
        device, why = current_cuda_device()
        print(f"device=cuda means: {device} ({why})")
    settings = resolve_settings()
    print("Settings in effect (options passed to torch.compile override these per key):")
    print(_table([("setting", "value", "source"), *settings.describe()]))
    print(f"engines run by: {_engine_runner(settings.engine_runtime)}")
    print(f"builds shown as: {progress.describe(settings.progress)}")
    for name in unknown_env_vars():
        print(f"warning: {name} is not a trt_multidev setting (a typo?)")
    return 0


def _engine_runner(choice: str) -> str:
    if choice == "torch_tensorrt":
        return "Torch-TensorRT's runtime (engine_runtime=torch_tensorrt)"
    if importlib.util.find_spec("torch_tensorrt") is None:
        return "nothing yet: torch_tensorrt is not installed"
    from .engine import runtime_cache_supported

    if runtime_cache_supported():
        return ("trt_multidev's runner, JIT kernels kept with disk-cache entries (TensorRT-RTX runtime "
                "cache); Torch-TensorRT's runtime for engines with shape tensors or data-dependent shapes")
    return "Torch-TensorRT's runtime (this TensorRT keeps no JIT kernels)"


class _Demo(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Linear(256, 512), torch.nn.GELU(), torch.nn.Linear(512, 512), torch.nn.GELU(),
            torch.nn.Linear(512, 256), torch.nn.LayerNorm(256),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + x


class _PipelineDemo(torch.nn.Module):
    """The demo MLP's layers spread over `devices` in order, activations copied between them, as
    pipeline placement or an accelerate device map does."""

    def __init__(self, devices: Sequence[torch.device]) -> None:
        super().__init__()
        layers = list(_Demo().body)
        self.devices = list(devices)
        self.stages = torch.nn.ModuleList()
        for i, device in enumerate(self.devices):
            part = layers[i * len(layers) // len(self.devices):(i + 1) * len(layers) // len(self.devices)]
            self.stages.append(torch.nn.Sequential(*part).to(device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage, device in zip(self.stages, self.devices):
            x = stage(x.to(device))
        return x


def _demo_device(text: str) -> torch.device:
    """--device: a device this process can run on, else an argparse error that says why not."""
    from .settings import _parse_device

    try:
        device = torch.device(_parse_device(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: {exc}") from None
    if device.type != "cuda":
        return device
    if not torch.cuda.is_available():
        why = ("this torch is a CPU-only build" if torch.version.cuda is None
               else f"this torch is built for CUDA {torch.version.cuda}, but no GPU is visible")
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: no CUDA device here: {why}")
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise argparse.ArgumentTypeError(
            f"invalid value {text!r}: {count} CUDA device(s) visible here (cuda:0..cuda:{count - 1})")
    return device


def _at_least_one(text: str) -> int:
    """--batch / --iters: an integer >= 1 (a batch of 0 has no relative error to report)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: expected an integer >= 1")
    return value


def _size(text: str) -> int:
    """--max-size: bytes or a size with a unit, as TRT_MULTIDEV_CACHE_SIZE accepts."""
    from .settings import _parse_size

    try:
        return _parse_size(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid value {text!r}: expected bytes, or sizes like 20GB / 512MiB") from None


def _best_device() -> torch.device:
    if not torch.cuda.is_available():
        return torch.device("cpu")
    best = max(range(torch.cuda.device_count()),
               key=lambda i: (torch.cuda.get_device_properties(i).total_memory, -i))
    return torch.device("cuda", best)


def _time(fn, x, iters: int) -> float:
    if x.is_cuda:
        torch.cuda.synchronize(x.device)
    start = time.perf_counter()
    for _ in range(iters):
        fn(x)
    if x.is_cuda:
        torch.cuda.synchronize(x.device)
    return (time.perf_counter() - start) / iters


def cmd_demo(args: argparse.Namespace) -> int:
    from . import backend, stats

    logging.basicConfig(level=logging.INFO, format="  [%(name)s] %(message)s")
    if args.pipeline:
        return _demo_pipeline(args)
    device = args.device or _best_device()
    print(f"demo: a 6-layer MLP on {device}, current device: "
          f"{'cuda:%d' % torch.cuda.current_device() if torch.cuda.is_available() else 'none (no CUDA)'}")
    if device.type != "cuda":
        print("demo: no GPU here, so TensorRT cannot run; expect the fallback warning below.")
    model = _Demo().eval().to(device)
    x = torch.randn(args.batch, 256, device=device)
    with torch.no_grad():
        expected = model(x)
        compiled = torch.compile(model, backend=backend)
        start = time.perf_counter()
        out = compiled(x)
        first = time.perf_counter() - start
        error = ((out - expected).norm() / expected.norm()).item()
        eager_t = _time(model, x, args.iters)
        compiled_t = _time(compiled, x, args.iters)
    print(f"first call (compile): {first:.2f} s")
    print(f"eager: {eager_t * 1e3:.3f} ms/call   trt_multidev: {compiled_t * 1e3:.3f} ms/call")
    print(f"relative error vs eager: {error:.2e}; output on {out.device}")
    print(f"counters: {stats()}")
    return 0


def _demo_pipeline(args: argparse.Namespace) -> int:
    """The demo MLP split over every visible GPU: one stage per GPU, shown in the plan line."""
    from . import backend, stats

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count < 2:
        print(f"trt-multidev demo: error: --pipeline needs two or more visible GPUs ({count} visible)",
              file=sys.stderr)
        return 2
    devices = [torch.device("cuda", i) for i in range(min(count, 3))]
    model = _PipelineDemo(devices).eval()
    x = torch.randn(args.batch, 256, device=devices[0])
    print(f"demo: the MLP's layers over {', '.join(map(str, devices))}; current device: "
          f"cuda:{torch.cuda.current_device()}")
    with torch.no_grad():
        expected = model(x)
        start = time.perf_counter()
        out = torch.compile(model, backend=backend)(x)
        first = time.perf_counter() - start
        error = ((out - expected).norm() / expected.norm()).item()
    print(f"first call (compile): {first:.2f} s")
    print(f"relative error vs eager: {error:.2e}; output on {out.device}")
    print(f"counters: {stats()}")
    return 0


def _human(size: float) -> str:
    if size < 1024:
        return f"{size:.0f} B"
    for unit in ("KiB", "MiB", "GiB"):
        size /= 1024
        if size < 1024 or unit == "GiB":
            break
    return f"{size:.1f} {unit}"


def _store(args: argparse.Namespace) -> tuple[DiskCache, str]:
    """The disk cache the command works on, and where its directory came from."""
    from .diskcache import DiskCache

    settings = resolve_settings()
    root = args.dir or settings.cache_dir
    origin = "--dir" if args.dir else settings.sources.get("cache_dir", "default")
    limit = args.max_size if args.max_size is not None else settings.cache_size
    return DiskCache(root, limit), origin


def _unusable(root: Path) -> OSError | None:
    """Why `root` cannot hold the disk cache, or None. An absent directory is an empty cache."""
    try:
        if not stat.S_ISDIR(os.stat(root).st_mode):
            return NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(root))
        os.listdir(root)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return exc
    return None


def cmd_cache(args: argparse.Namespace) -> int:
    store, origin = _store(args)
    problem = _unusable(store.root)
    if problem is None:
        try:
            return _cache_action(args.action, store)
        except OSError as exc:
            problem = exc
    print(f"error: disk cache directory {store.root} ({origin}) cannot be used: {problem}", file=sys.stderr)
    return 1


def _cache_action(action: str, store: DiskCache) -> int:
    if action in ("list", "stats"):
        entries = sorted(store.entries(), key=lambda e: (e.namespace, -e.last_used))
    if action == "list":
        print(f"disk cache: {store.root}")
        if not entries:
            print("  (empty)")
            return 0
        rows = [("namespace (versions / GPU identity)", "key", "graph", "built on", "size", "last used")]
        for e in entries:
            rows.append((e.namespace, e.key[:12], str(e.meta.get("graph", "?")), str(e.meta.get("device", "?")),
                         _human(e.size), time.strftime("%Y-%m-%d %H:%M", time.localtime(e.last_used))))
        print(_table(rows))
    elif action == "stats":
        total = sum(e.size for e in entries)
        print(f"disk cache: {store.root}")
        print(f"entries: {len(entries)}  size: {_human(total)}  limit: {_human(store.size_limit)}")
        by_ns: dict[str, list] = {}
        for e in entries:
            by_ns.setdefault(e.namespace, []).append(e)
        if by_ns:
            print(_table([("namespace", "entries", "size")] + [
                (ns, str(len(es)), _human(sum(e.size for e in es))) for ns, es in sorted(by_ns.items())]))
    elif action == "clear":
        print(f"removed {store.clear()} entries from {store.root}")
    elif action == "prune":
        removed = store.evict()
        print(f"removed {len(removed)} least recently used entries ({_human(sum(e.size for e in removed))}); "
              f"{_human(store.total_size())} left of {_human(store.size_limit)}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="trt-multidev", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="versions, GPUs and the settings in effect with their sources").set_defaults(fn=cmd_info)
    demo = sub.add_parser("demo", help="compile a small model on the best device and time it")
    demo.add_argument("--device", type=_demo_device,
                      help="cuda:N, N, cuda or cpu (default: the GPU with the most memory)")
    demo.add_argument("--batch", type=_at_least_one, default=64, help="batch size, >= 1")
    demo.add_argument("--iters", type=_at_least_one, default=50, help="timed calls, >= 1")
    demo.add_argument("--pipeline", action="store_true",
                      help="spread the model over the visible GPUs (two or more): one stage per GPU")
    demo.set_defaults(fn=cmd_demo)
    cache = sub.add_parser("cache", help="the disk cache: list, stats, clear, prune")
    cache.add_argument("action", choices=("list", "stats", "clear", "prune"))
    cache.add_argument("--dir", help="cache directory (default: TRT_MULTIDEV_CACHE_DIR or the user cache dir)")
    cache.add_argument("--max-size", type=_size,
                       help="prune: size to prune to, bytes or e.g. 20GB, 512MiB (default: TRT_MULTIDEV_CACHE_SIZE)")
    cache.set_defaults(fn=cmd_cache)
    args = parser.parse_args(argv)
    try:
        return int(args.fn(args))
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
