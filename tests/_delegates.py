"""Module-level delegates, so tests can name them as 'module:function' strings."""

from __future__ import annotations

CALLS: list = []


def run_graph(gm, example_inputs, *, device, settings):
    """A real CPU delegate: records the call and runs the placed graph as it is."""
    CALLS.append((str(device), settings.precision))
    return gm.forward


def broken(gm, example_inputs, *, device, settings):
    raise RuntimeError("engine build exploded")


not_callable = 42


SEEN_SETTINGS: list = []


def record_settings(gm, example_inputs, *, device, settings):
    SEEN_SETTINGS.append(settings)
    return gm.forward
