"""Progress of builds and loads: a live display on a terminal, one start and one end line
elsewhere, nothing for work that ends within about a second.

A first call blocks for the whole TensorRT build (seconds for ResNet-50, minutes for large
models). The pipeline wraps every delegate build and disk-cache load in :func:`track`, so every
delegate is covered, test delegates included. Output goes to stderr rather than through
logging: it is for the person watching, like any progress bar, and a library's INFO records are
invisible unless the program configures logging (the log keeps its own "built ... in N s"
record at ``log_level``). The ``progress`` setting turns it off.

The live display is drawn with rich (the ``progress`` extra), imported only when one is shown;
without rich, lines are written instead. A delegate can report what it is doing through
:func:`current`: ``current().phase("building engine")``, ``current().advance(3, 10)``.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import sys
import threading
import time
from typing import Any, Iterator, TextIO

from .settings import Settings

__all__ = ["Progress", "Terminal", "TERMINAL", "SHOW_AFTER_S", "current", "describe", "track"]

log = logging.getLogger("trt_multidev.progress")

SHOW_AFTER_S = 1.0  # work that ends sooner shows nothing, so cache hits and small graphs stay quiet


class Terminal:
    """Where progress goes and whether it is an interactive terminal.

    The one seam for tests: replace :data:`TERMINAL` with ``Terminal(StringIO(), tty=True)`` to
    see what a terminal would get. By default the stream is ``sys.stderr`` as it is at each use
    (so redirections apply) and a terminal is what ``isatty()`` says, ``TERM=dumb`` excepted.
    """

    def __init__(self, stream: TextIO | None = None, tty: bool | None = None) -> None:
        self._stream = stream
        self._tty = tty

    @property
    def stream(self) -> TextIO:
        return self._stream if self._stream is not None else sys.stderr

    def is_terminal(self) -> bool:
        if self._tty is not None:
            return self._tty
        try:
            return bool(self.stream.isatty()) and os.environ.get("TERM") != "dumb"
        except (AttributeError, ValueError, OSError):  # no isatty, or a closed stream
            return False

    def console(self) -> Any:
        """A rich Console drawing on the stream (the live display), or None without rich."""
        try:
            from rich.console import Console
        except ImportError:
            return None
        return Console(file=self.stream, force_terminal=True)

    def write(self, line: str) -> None:
        try:
            self.stream.write(line + "\n")
            self.stream.flush()
        except (ValueError, OSError):  # a closed or broken stream: progress is not worth an error
            pass


TERMINAL = Terminal()


class Progress:
    """One build or load in flight.

    A delegate reaches it through :func:`current` and may call :meth:`phase` and :meth:`advance`
    (e.g. from a TensorRT progress monitor); the live display shows both, lines do not. The
    pipeline calls :meth:`finish` with what happened (built, loaded from the disk cache, ...).
    """

    def __init__(self, graph: str, device: str, live: bool, terminal: Terminal) -> None:
        self.graph = graph
        self.device = device
        self.live = live  # wanted; falls back to lines when no live display can be shown
        self.terminal = terminal
        self.started = time.monotonic()
        self.phase_text = "compiling"
        self.done: int | None = None
        self.total: int | None = None
        self.outcome: str | None = None
        self.detail: str | None = None
        self.shown = False
        self.ended = False
        self.spinner: Any = None
        self.timer: threading.Timer | None = None

    def phase(self, text: str) -> None:
        """What the build is doing now (live display only)."""
        self.phase_text = str(text)
        self.done = self.total = None

    def advance(self, done: int, total: int | None = None) -> None:
        """Steps done within the current phase, out of `total` when known (live display only)."""
        self.done, self.total = int(done), (None if total is None else int(total))

    def finish(self, outcome: str, detail: str | None = None) -> None:
        """What happened, for the end line: e.g. 'built', 'loaded from the disk cache'."""
        self.outcome, self.detail = outcome, detail

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def start_line(self) -> str:
        return f"trt_multidev: compiling {self.graph} on {self.device} ..."

    def end_line(self, failure: BaseException | None) -> str:
        took = f"{self.elapsed():.1f} s"
        if failure is not None:
            what = "interrupted" if isinstance(failure, KeyboardInterrupt) else "failed"
            return f"trt_multidev: {self.graph} on {self.device}: {what} after {took} ({type(failure).__name__})"
        detail = f" ({self.detail})" if self.detail else ""
        return f"trt_multidev: {self.graph} on {self.device}: {self.outcome or 'done'} in {took}{detail}"

    def status(self) -> str:
        """The live row's text."""
        steps = ""
        if self.done is not None:
            steps = f" {self.done}/{self.total}" if self.total else f" {self.done}"
        # What changes first, the graph's name (up to ~70 characters) last: narrow terminals cut it.
        return f"trt_multidev: {self.phase_text}{steps} on {self.device} · {self.elapsed():.0f} s · {self.graph}"


class _Inert(Progress):
    """What :func:`current` returns outside a tracked build: every call does nothing."""

    def __init__(self) -> None:
        super().__init__("", "", False, TERMINAL)

    def phase(self, text: str) -> None:
        pass

    def advance(self, done: int, total: int | None = None) -> None:
        pass

    def finish(self, outcome: str, detail: str | None = None) -> None:
        pass


_INERT = _Inert()
_CURRENT: contextvars.ContextVar[Progress] = contextvars.ContextVar("trt_multidev_progress", default=_INERT)


def describe(setting: str) -> str:
    """How builds will be shown with this `progress` value, for ``trt-multidev info`` (rich is
    looked up, not imported)."""
    import importlib.metadata
    import importlib.util

    if setting == "off":
        return "nothing (progress=off)"
    if importlib.util.find_spec("rich") is None:
        return ('start and end lines on stderr (rich is not installed, so no live display: '
                'pip install "trt-multidev-backend[progress]")')
    version = importlib.metadata.version("rich")
    if setting == "on":
        return f"a live display on stderr (rich {version}), also where it is not a terminal"
    return f"a live display where stderr is a terminal (rich {version}), start and end lines elsewhere"


def current() -> Progress:
    """The build or load in flight in this thread (an inert one outside any)."""
    return _CURRENT.get()


@contextlib.contextmanager
def track(graph: str, device: str, settings: Settings) -> Iterator[Progress]:
    """Show the work in the block once it has lasted :data:`SHOW_AFTER_S`: a live row, or a start
    line, then an end line (outcome, elapsed seconds, or the exception type). Stops on any exit."""
    if settings.progress == "off":
        token = _CURRENT.set(_INERT)
        try:
            yield _INERT
        finally:
            _CURRENT.reset(token)
        return
    terminal = TERMINAL
    job = Progress(graph, device, settings.progress == "on" or terminal.is_terminal(), terminal)
    token = _CURRENT.set(job)
    _BOARD.begin(job)
    failure: BaseException | None = None
    try:
        yield job
    except BaseException as exc:
        failure = exc
        raise
    finally:
        _CURRENT.reset(token)
        _BOARD.end(job, failure)


class _Rows:
    """The live display's content: one spinner row per shown job, read at each refresh."""

    def __init__(self, board: _Board) -> None:
        self.board = board

    def __rich__(self) -> Any:
        from rich.table import Table
        from rich.text import Text

        grid = Table.grid(padding=(0, 1))
        grid.add_column(no_wrap=True)
        grid.add_column(no_wrap=True, overflow="ellipsis")  # one line per job, however narrow
        for job in self.board.rows:  # a tuple replaced whole under the board's lock: read as is
            grid.add_row(job.spinner, Text(job.status()))
        return grid


class _Board:
    """Every job in flight in this process and the one live display they share.

    One lock orders reveals, ends and writes, so lines of two threads never mix and the live
    display is started and stopped once. rich's refresh thread reads :attr:`rows` without it
    (rich holds its own lock while it draws; taking ours there could deadlock with an end).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.rows: tuple[Progress, ...] = ()
        self.live: Any = None
        self._live_terminal: Terminal | None = None

    def begin(self, job: Progress) -> None:
        timer = threading.Timer(SHOW_AFTER_S, self._reveal, (job,))
        timer.daemon = True
        job.timer = timer
        timer.start()

    def _reveal(self, job: Progress) -> None:
        try:
            with self._lock:
                if job.ended:
                    return
                job.shown = True
                if job.live and self._join_live(job):
                    return
                job.live = False
                job.terminal.write(job.start_line())
        except Exception:  # progress must never break a build
            log.debug("progress display failed", exc_info=True)

    def end(self, job: Progress, failure: BaseException | None) -> None:
        if job.timer is not None:
            job.timer.cancel()
        try:
            with self._lock:
                job.ended = True
                if not job.shown:
                    return
                line = job.end_line(failure)
                if job in self.rows:
                    self.rows = tuple(r for r in self.rows if r is not job)
                    self.live.console.print(line, markup=False, highlight=False, soft_wrap=True)
                    if not self.rows:
                        self._stop_live()
                else:
                    job.terminal.write(line)
        except Exception:
            log.debug("progress display failed", exc_info=True)
            with self._lock:
                if not self.rows:
                    self._stop_live()

    def _join_live(self, job: Progress) -> bool:
        """Add a row for `job` to the live display, starting it if needed; False: use lines."""
        if self.live is not None:
            if self._live_terminal is not job.terminal:
                return False  # the seam was replaced meanwhile: one display draws on one stream
            job.spinner = _spinner()
            self.rows = (*self.rows, job)
            return True
        console = job.terminal.console()
        if console is None:
            return False  # no rich
        from rich.live import Live

        job.spinner = _spinner()
        self.rows = (job,)
        live = Live(_Rows(self), console=console, refresh_per_second=8, transient=True,
                    redirect_stdout=False, redirect_stderr=False)
        try:
            live.start(refresh=True)
        except Exception:  # e.g. a live display of the program's own on this console
            log.debug("cannot start the live display", exc_info=True)
            self.rows = ()
            return False
        self.live, self._live_terminal = live, job.terminal
        return True

    def _stop_live(self) -> None:
        live, self.live, self._live_terminal = self.live, None, None
        if live is not None:
            try:
                live.stop()
            except Exception:
                log.debug("stopping the live display failed", exc_info=True)


def _spinner() -> Any:
    from rich.spinner import Spinner

    return Spinner("dots", style="cyan")  # one per job, so each turns at its own pace


_BOARD = _Board()
