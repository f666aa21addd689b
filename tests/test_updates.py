"""In-place updates of a graph's inputs done again on them in PyTorch after a delegate that, like
Torch-TensorRT, would not write them back (updates.py)."""

from __future__ import annotations

import logging

import torch

import trt_multidev_backend as tm
from test_fallback import DropsUpdates


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("trt_multidev")]


def test_a_chain_of_updates_is_done_again_in_order_and_reads_after_it_see_the_new_value(caplog):
    delegate = DropsUpdates()

    def step(x, y):
        before = x.sum()  # reads the input as it came
        x.mul_(2).add_(y)  # an update of the update's result: the input again
        return x, before, x.sum()

    compiled = torch.compile(step, backend="trt_multidev", options={"delegate": delegate, "device": "cpu"})
    x, y = torch.ones(3), torch.arange(3.0)
    ref_x = x.clone()
    for _ in range(2):
        out, before, after = compiled(x, y)
        ref_out, ref_before, ref_after = step(ref_x, y)
        assert out is x  # the graph returns the input itself, as eager does
        torch.testing.assert_close(x, ref_x, rtol=0, atol=0)
        assert before.item() == ref_before.item() and after.item() == ref_after.item()
    code, = [call.code for call in delegate.calls]
    assert "mul_" not in code and "add_" not in code  # the delegate computes them out of place
    assert _warnings(caplog) == [] and tm.stats()["cpu"]["fallbacks"] == 0


def test_an_input_the_graph_may_get_as_a_copy_is_not_updated_after_it_but_falls_back(caplog):
    """input_policy=move copies an input on another device: an update after the engine would
    reach the copy, not the caller's tensor."""
    delegate = DropsUpdates()
    compiled = torch.compile(lambda x: x.add_(1) * 2, backend="trt_multidev",
                             options={"delegate": delegate, "device": "cpu", "input_policy": "move"})
    x = torch.zeros(3)
    compiled(x)
    assert x.tolist() == [1.0, 1.0, 1.0] and delegate.calls == []  # the fallback wrote it
    warned = [w for w in _warnings(caplog) if "in place" in w]
    assert len(warned) == 1 and "input_policy=move" in warned[0]


def test_a_graph_that_hands_out_the_updated_input_hands_out_the_input_itself():
    """Dynamo returns an updated input itself, outside its graph; a graph that returns it (or the
    update's result) gets the input back after the updates, not the out-of-place value."""
    from helpers import capture

    from trt_multidev_backend.graphinfo import classify_args
    from trt_multidev_backend.updates import updates_after_the_engines

    gm, inputs = capture(lambda x: x.add_(1) * 2, torch.zeros(3))
    placeholder = next(n for n in gm.graph.nodes if n.op == "placeholder")
    output = next(n for n in gm.graph.nodes if n.op == "output")
    write = next(n for n in gm.graph.nodes if n.target == "add_")
    output.args = ((*output.args[0], placeholder, write),)  # as a hand-made graph might
    gm.recompile()
    infos = classify_args(gm, inputs)
    notes, left = updates_after_the_engines(gm, infos, [infos[0].name], {0})
    assert len(notes) == 1 and left == []
    # The update, now out of place, has memory of its own in the graph's metadata too (what later
    # passes read to tell views and aliases); the update done again after it is the input's.
    from trt_multidev_backend.graphinfo import WRITTEN_BACK, meta_value, storage_of
    replay = next(n for n in gm.graph.nodes if n.meta.get(WRITTEN_BACK))
    values = [write.meta[key] for key in ("example_value", "val") if key in write.meta]
    ptr = meta_value(placeholder).untyped_storage()._cdata
    assert write.target == "add" and values and all(v.untyped_storage()._cdata != ptr for v in values)
    assert storage_of(replay) == storage_of(placeholder)
    x = torch.zeros(3)
    doubled, same, again = gm(x)
    assert same is x and again is x and x.tolist() == [1.0] * 3 and doubled.tolist() == [2.0] * 3


class Cache(torch.nn.Module):
    """A static KV cache held as module state: each call writes its keys at `position` and reads
    the cache back (Hugging Face keeps the tensors on a cache object; the graph is the same)."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(4, 4)
        self.register_buffer("keys", torch.zeros(1, 8, 4))

    def forward(self, x, position):
        self.keys.index_copy_(1, position, self.proj(x))
        return self.keys.sum(1)


def test_a_cache_on_a_fake_gpu_is_written_after_the_engine_on_that_gpu(fake_mode):
    """On a fake cuda:1 (the engine-like delegate propagates FakeTensors, which raise on any device
    mix): the delegate gets the graph with the write as a scatter on cuda:1, not the fallback."""
    from helpers import fake, on_fake_device

    delegate = DropsUpdates()
    model = on_fake_device(Cache().eval(), "cuda:1", fake_mode)
    with fake_mode:
        position = torch.tensor([3], device="cuda:1")
    out = torch.compile(model, backend="trt_multidev", options={"delegate": delegate})(
        fake(fake_mode, 1, 1, 4, device="cuda:1"), position)
    (call,) = delegate.calls
    assert out.device == torch.device("cuda", 1) and str(call.device) == "cuda:1"
    assert "scatter" in call.code and "index_copy" not in call.code  # the write after it, in PyTorch
    assert set(call.input_devices) == {torch.device("cuda", 1)}
    assert tm.stats()["cuda:1"]["fallbacks"] == 0 and tm.stats()["cuda:1"]["compiles"] == 1


def test_an_input_that_shares_memory_with_another_is_not_updated_after_it_but_falls_back(caplog):
    """x and a view of it passed as two inputs: an update of x after the engine would come too
    late for what the engine reads through the view."""
    delegate = DropsUpdates()

    def step(x, row):
        x.add_(1)
        return row * 2  # eager reads the updated row

    compiled = torch.compile(step, backend="trt_multidev", options={"delegate": delegate, "device": "cpu"})
    x = torch.zeros(2, 3)
    ref = x.clone()
    out = compiled(x, x[0])
    assert out.tolist() == step(ref, ref[0]).tolist() == [2.0, 2.0, 2.0]
    assert x.tolist() == ref.tolist() and delegate.calls == []  # the fallback ran it
    warned = [w for w in _warnings(caplog) if "in place" in w]
    assert len(warned) == 1 and "another input shares its memory" in warned[0]
