"""Torch-TensorRT's repeated warnings during a build: each shown once, then counted.

Torch-TensorRT 2.11 warns once per converted node for some graphs: on an H200, every Llama
graph whose attention runs cuDNN's kernel printed "Detected unparsable type in node formatting:
<class 'NoneType'>" 24 times (its log formatter meets the kernel's None outputs; session 12).
While trt_multidev builds, the first record of each distinct warning passes and its repeats
(same logger, same text, same thread) are counted, then reported in one line. Levels are never
changed, records below WARNING pass untouched, and with `log_level=debug` every repeat is shown.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from typing import Iterator

__all__ = ["collapsed_repeats"]

log = logging.getLogger("trt_multidev.repeats")


class _Repeats(logging.Filter):
    """Passes the first WARNING-or-above record of each (logger, text) made on one thread."""

    def __init__(self) -> None:
        super().__init__()
        self.thread = threading.get_ident()
        self.counts: dict[tuple[str, str], int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or record.thread != self.thread:
            return True  # other threads' builds and records are their own
        key = (record.name, record.getMessage())
        seen = self.counts.get(key, 0)
        self.counts[key] = seen + 1
        return seen == 0


def _loggers(prefix: str) -> list[logging.Logger]:
    names = [name for name in list(logging.Logger.manager.loggerDict) if name.startswith(prefix)]
    return [logging.getLogger(prefix)] + [logging.getLogger(name) for name in names if name != prefix]


@contextlib.contextmanager
def collapsed_repeats(what: str, *, enabled: bool = True, prefix: str = "torch_tensorrt") -> Iterator[None]:
    """Within the block, the loggers whose names start with `prefix` show each distinct warning
    once; after it, one line says which came again and how often, naming `what` was built."""
    if not enabled:
        yield
        return
    repeats = _Repeats()
    loggers = _loggers(prefix)
    for logger in loggers:
        logger.addFilter(repeats)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(repeats)
        again = [(text, n - 1) for (_, text), n in repeats.counts.items() if n > 1]
        if again:
            listed = "; ".join(f"{text[:160]!r} {n} more time{'s' if n > 1 else ''}" for text, n in again)
            log.warning("trt_multidev: while building %s, Torch-TensorRT repeated %d warning(s) shown once above: "
                        "%s. (log_level=debug shows every repeat.)", what, len(again), listed)
