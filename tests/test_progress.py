"""Progress of slow builds and loads: lines when stderr is not a terminal, a live display on one
(through the Terminal seam), nothing for quick work or with progress=off, clean stops on errors."""

from __future__ import annotations

import io
import re
import sys
import threading
import time

import pytest
import torch

import _delegates
import trt_multidev_backend as tm
from helpers import capture, fake, on_fake_device, TwoLinear as Net
from trt_multidev_backend import progress
from trt_multidev_backend.settings import resolve_settings

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def ours(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("trt_multidev:")]


@pytest.fixture
def terminal(monkeypatch):
    """stderr as a terminal would see it: the seam the live display draws through."""
    screen = progress.Terminal(io.StringIO(), tty=True)
    monkeypatch.setattr(progress, "TERMINAL", screen)
    yield screen
    assert progress._BOARD.live is None and progress._BOARD.rows == ()  # nothing left running


@pytest.fixture
def quick(monkeypatch):
    """Shorter thresholds, for tests about what is *not* shown."""
    monkeypatch.setattr(progress, "SHOW_AFTER_S", 0.2)
    monkeypatch.setattr(_delegates, "SLOW_SECONDS", 0.5)


def test_slow_build_without_a_terminal_prints_one_start_and_one_end_line(capsys, fake_mode):
    model = on_fake_device(Net(), "cuda:1", fake_mode)
    compiled = torch.compile(model, backend="trt_multidev", options={"delegate": "_delegates:slow"})
    compiled(fake(fake_mode, 4, 8, device="cuda:1"))
    compiled(fake(fake_mode, 4, 8, device="cuda:1"))  # no new build: nothing more
    err = capsys.readouterr().err
    start, end = ours(err)
    assert re.fullmatch(r"trt_multidev: compiling graph\(.*\) of \d+ ops on cuda:1 \.\.\.", start), start
    assert re.fullmatch(r"trt_multidev: graph\(.*\) of \d+ ops on cuda:1: built in 1\.\d s", end), end
    assert not ANSI.search(err)


def test_a_fast_build_prints_nothing_on_a_terminal_or_elsewhere(terminal, quick, capsys):
    torch.compile(Net(), backend="trt_multidev", options={"delegate": "_delegates:run_graph"})(torch.randn(2, 8))
    time.sleep(progress.SHOW_AFTER_S + 0.2)  # past the moment anything would have been shown
    assert terminal.stream.getvalue() == ""
    progress.TERMINAL = progress.Terminal(sys.stderr, tty=False)
    torch._dynamo.reset()
    torch.compile(Net(), backend="trt_multidev", options={"delegate": "_delegates:run_graph"})(torch.randn(2, 8))
    time.sleep(progress.SHOW_AFTER_S + 0.2)
    assert ours(capsys.readouterr().err) == []


@pytest.mark.parametrize("tty", [True, False])
def test_progress_off_prints_nothing(tty, quick, monkeypatch, capsys):
    screen = progress.Terminal(io.StringIO(), tty=tty)
    monkeypatch.setattr(progress, "TERMINAL", screen)
    monkeypatch.setenv("TRT_MULTIDEV_PROGRESS", "off")
    torch.compile(Net(), backend="trt_multidev", options={"delegate": "_delegates:slow"})(torch.randn(2, 8))
    assert screen.stream.getvalue() == "" and capsys.readouterr().err == ""


def test_live_display_on_a_terminal(terminal):
    pytest.importorskip("rich")
    torch.compile(Net(), backend="trt_multidev", options={"delegate": "_delegates:slow"})(torch.randn(2, 8))
    drawn = terminal.stream.getvalue()
    assert ANSI.search(drawn)  # drawn in place, not written as lines
    plain = ANSI.sub("", drawn)
    # The live row: the delegate's phase and steps through current(), device, elapsed seconds.
    assert re.search(r"trt_multidev: pretending to build [1-5]/5 on cpu · [12] s · graph\(", plain), plain
    # It leaves one line: what happened and how long it took.
    (end,) = [line.strip() for line in re.split(r"[\r\n]", plain) if ": built in" in line]
    assert re.fullmatch(r"trt_multidev: graph\(.*\) of \d+ ops on cpu: built in 1\.\d s", end), end
    assert "compiling graph" not in plain  # no start line: the live row stands for it


def test_without_rich_a_terminal_gets_lines(terminal, monkeypatch):
    monkeypatch.setitem(sys.modules, "rich.console", None)  # as if rich were not installed
    torch.compile(Net(), backend="trt_multidev", options={"delegate": "_delegates:slow"})(torch.randn(2, 8))
    drawn = terminal.stream.getvalue()
    assert not ANSI.search(drawn)
    start, end = ours(drawn)
    assert start.endswith("on cpu ...") and re.search(r": built in 1\.\d s$", end)


def test_progress_on_draws_live_where_stderr_is_not_a_terminal(monkeypatch):
    pytest.importorskip("rich")
    screen = progress.Terminal(io.StringIO(), tty=False)
    monkeypatch.setattr(progress, "TERMINAL", screen)
    torch.compile(Net(), backend="trt_multidev",
                  options={"delegate": "_delegates:slow", "progress": "on"})(torch.randn(2, 8))
    assert ANSI.search(screen.stream.getvalue()) and "pretending to build" in screen.stream.getvalue()
    assert progress._BOARD.live is None


def _two_graphs():
    def first(alpha):
        return torch.relu(alpha) + 1

    def second(beta):
        return torch.sin(beta) * 2

    return [capture(first, torch.randn(2, 3)), capture(second, torch.randn(3, 2))]


@pytest.mark.parametrize("tty", [False, True])
def test_two_threads_building_at_once_keep_their_lines_apart(tty, monkeypatch):
    if tty:
        pytest.importorskip("rich")
    screen = progress.Terminal(io.StringIO(), tty=tty)
    monkeypatch.setattr(progress, "TERMINAL", screen)
    errors: list[BaseException] = []

    def build(gm, inputs):
        try:
            tm.backend(gm, inputs, options={"delegate": "_delegates:slow"})
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=build, args=pair) for pair in _two_graphs()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    text = ANSI.sub("", screen.stream.getvalue())
    lines = [line.strip() for line in re.split(r"[\r\n]", text) if line.strip()]
    for name in ("alpha", "beta"):
        ends = [line for line in lines if re.fullmatch(rf"trt_multidev: graph\({name}\) of \d+ ops on cpu: built in 1\.\d s",
                                                       line)]
        assert len(ends) == 1, lines
        starts = [line for line in lines if line == f"trt_multidev: compiling graph({name}) of 2 ops on cpu ..."]
        assert len(starts) == (0 if tty else 1), lines
    if tty:  # both rows were drawn by one display
        assert any("graph(alpha)" in line for line in lines if "pretending" in line)
        assert any("graph(beta)" in line for line in lines if "pretending" in line)
    else:
        assert len(lines) == 4
    assert progress._BOARD.live is None and progress._BOARD.rows == ()


@pytest.mark.parametrize("tty", [False, True])
def test_a_failed_build_ends_its_display(tty, monkeypatch, caplog):
    if tty:
        pytest.importorskip("rich")
    screen = progress.Terminal(io.StringIO(), tty=tty)
    monkeypatch.setattr(progress, "TERMINAL", screen)
    out = torch.compile(Net(), backend="trt_multidev",
                        options={"delegate": "_delegates:slow_broken"})(torch.randn(2, 8))
    assert out.shape == (2, 8)  # the fallback ran
    (end,) = [line.strip() for line in re.split(r"[\r\n]", ANSI.sub("", screen.stream.getvalue()))
              if "failed after" in line]
    assert re.fullmatch(r"trt_multidev: graph\(.*\) of \d+ ops on cpu: failed after 1\.\d s \(RuntimeError\)", end), end
    assert progress._BOARD.live is None and progress._BOARD.rows == ()
    assert any("eager fallback" in r.getMessage() for r in caplog.records)


def test_an_interrupt_ends_the_display(terminal, quick):
    pytest.importorskip("rich")
    settings = resolve_settings({}, environ={})
    with pytest.raises(KeyboardInterrupt):
        with progress.track("graph(x) of 1 ops", "cuda:1", settings):
            time.sleep(0.4)
            raise KeyboardInterrupt
    plain = ANSI.sub("", terminal.stream.getvalue())
    assert re.search(r"trt_multidev: graph\(x\) of 1 ops on cuda:1: interrupted after 0\.\d s \(KeyboardInterrupt\)",
                     plain), plain


def test_a_slow_disk_load_says_it_was_loaded(monkeypatch, capsys):
    monkeypatch.setattr(progress, "SHOW_AFTER_S", 0.2)
    monkeypatch.setenv("SERIALIZING_BUILD_SECONDS", "0.4")
    loads = type(_delegates.serializing).loads

    def slow_loads(self, blob, *, device, settings):
        time.sleep(0.4)
        return loads(self, blob, device=device, settings=settings)

    monkeypatch.setattr(type(_delegates.serializing), "loads", slow_loads)
    options = {"delegate": "_delegates:serializing"}
    torch.compile(Net(), backend="trt_multidev", options=options)(torch.randn(2, 8))
    tm.backend._reuse.clear()  # as a new process would: only the disk has the entry
    torch._dynamo.reset()
    torch.compile(Net(), backend="trt_multidev", options=options)(torch.randn(2, 8))
    lines = ours(capsys.readouterr().err)
    assert len(lines) == 4, lines
    assert re.search(r"on cpu: built and stored in the disk cache in 0\.\d s$", lines[1])
    assert re.search(r"on cpu: loaded from the disk cache in 0\.\d s$", lines[3])


def test_current_outside_a_build_is_inert_and_inside_is_the_build():
    inert = progress.current()
    inert.phase("nothing")
    inert.advance(1, 2)
    assert inert.status() == progress.current().status()  # unchanged, shared, harmless
    settings = resolve_settings({"progress": "off"}, environ={})
    with progress.track("g", "cpu", settings) as job:
        assert progress.current() is job
    settings = resolve_settings({}, environ={})
    with progress.track("graph(x) of 3 ops", "cuda:2", settings) as job:
        assert progress.current() is job
        job.phase("building engine")
        job.advance(3, 10)
        assert job.status().startswith("trt_multidev: building engine 3/10 on cuda:2 · 0 s · graph(x) of 3 ops")
    assert progress.current() is inert


def test_import_does_not_load_rich():
    import subprocess

    code = "import sys, trt_multidev_backend; print('rich' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "False", out.stderr
