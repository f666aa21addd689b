"""The guarded callable: input checks, moves, outputs, threads."""

from __future__ import annotations

import threading

import pytest
import torch
import torch.nn as nn

import trt_multidev_backend as tm
from helpers import EngineLikeDelegate, capture, fake, on_fake_device
from trt_multidev_backend.placement import ArgAction
from trt_multidev_backend.runtime import GuardedCallable

CUDA1 = torch.device("cuda", 1)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return torch.relu(self.fc(x))


def compiled_on_cuda1(fake_mode, **options):
    net = on_fake_device(Net(), "cuda:1", fake_mode)
    gm, inputs = capture(net, fake(fake_mode, 2, 4, device="cuda:1"))
    compiled = tm.backend(gm, inputs, options={"delegate": EngineLikeDelegate(), **options})
    x_index = next(a.index for a in compiled.actions if a.name == "x")
    return compiled, inputs, x_index


def test_wrong_device_input_is_a_clear_error(fake_mode):
    compiled, inputs, i = compiled_on_cuda1(fake_mode)
    args = list(inputs)
    args[i] = fake(fake_mode, 2, 4, device="cuda:0")
    with pytest.raises(tm.InputDeviceError) as err:
        compiled(*args)
    text = str(err.value)
    assert "argument 'x' is on cuda:0" in text and "compiled for cuda:1" in text
    assert "input_policy='move'" in text and "TRT_MULTIDEV_INPUT_POLICY" in text


def test_input_policy_move_copies_the_input(fake_mode):
    compiled, inputs, i = compiled_on_cuda1(fake_mode, input_policy="move")
    args = list(inputs)
    args[i] = fake(fake_mode, 2, 4, device="cuda:0")
    (out,) = compiled(*args)
    assert out.device == CUDA1


def test_right_device_inputs_pass_untouched():
    seen = []

    def fn(*args):
        seen.append(args)
        return (args[0] * 2,)

    x = torch.randn(3)
    wrapper = GuardedCallable(fn, torch.device("cpu"), [ArgAction("check", 0, torch.device("cpu"), "x")])
    (out,) = wrapper(x, 5)
    assert seen[0][0] is x and seen[0][1] == 5
    assert torch.equal(out, x * 2)


def test_outputs_move_back_and_non_tensors_pass():
    wrapper = GuardedCallable(lambda x: (x + 1, "tag", x), torch.device("cpu"),
                              output_moves=[(0, torch.device("meta")), (1, torch.device("meta"))])
    out = wrapper(torch.ones(2))
    assert out[0].device.type == "meta" and out[1] == "tag" and out[2].device.type == "cpu"
    # Torch-TensorRT's engine modules return lists: moved alike, and still a list
    listed = GuardedCallable(lambda x: [x + 1, x], torch.device("cpu"), output_moves=[(0, torch.device("meta"))])
    out = listed(torch.ones(2))
    assert isinstance(out, list) and out[0].device.type == "meta" and out[1].device.type == "cpu"


def test_state_is_copied_once_and_followed_after_in_place_changes():
    source = torch.arange(3.0)
    copies = []

    def fn(state):
        copies.append(state)
        return (state.sum(),)

    wrapper = GuardedCallable(fn, torch.device("cpu"), [ArgAction("state", 0, torch.device("cpu"), "t")])
    wrapper(source)
    wrapper(source)
    assert copies[0] is copies[1] and copies[0] is not source
    source.mul_(2)
    (total,) = wrapper(source)
    assert copies[2] is not copies[0] and total.item() == 6.0
    other = torch.ones(3)  # another tensor in the same place (a buffer reassigned)...
    other.fill_(1.0)  # ...at the same version as the one before
    assert other._version == source._version
    (total,) = wrapper(other)
    assert total.item() == 3.0  # its own values, not the copy of the tensor before


def test_serialized_calls_from_four_threads_match_single_threaded():
    # A real CPU delegate result with a shared scratch buffer: unsafe without the wrapper's lock.
    scratch = torch.zeros(1000)

    def fn(x):
        scratch.copy_(x)
        for _ in range(50):
            scratch.mul_(1.0001)
        return (scratch.clone(),)

    wrapper = GuardedCallable(fn, torch.device("cpu"), serialize=True)
    inputs = [torch.full((1000,), float(i)) for i in range(4)]
    expected = [fn(x)[0] for x in inputs]
    results: dict[int, list[torch.Tensor]] = {i: [] for i in range(4)}

    def worker(i):
        for _ in range(25):
            results[i].append(wrapper(inputs[i])[0])

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(4):
        assert all(torch.equal(r, expected[i]) for r in results[i])


def test_repr_says_where_and_how(fake_mode):
    compiled, _, _ = compiled_on_cuda1(fake_mode)
    assert "cuda:1" in repr(compiled) and "EngineLikeDelegate" in repr(compiled)


def test_a_pinned_scalar_is_checked_at_every_call():
    """A module scalar the graph holds as a constant (rewrites.pin_state_scalars): the call goes
    through while it holds that value, and a change is a clear error, not a silently old value."""
    eps = torch.tensor(1e-5, dtype=torch.float64)
    wrapped = GuardedCallable(lambda x, e: x * 2, torch.device("cpu"),
                              [ArgAction("pinned", 1, torch.device("cpu"), "self.norm.eps", 1e-5)])
    assert torch.equal(wrapped(torch.ones(2), eps), torch.full((2,), 2.0))
    eps.fill_(0.5)
    with pytest.raises(tm.TrtMultidevError, match=r"'self\.norm\.eps' was 1e-05 .* is now 0\.5.*torch\._dynamo\.reset"):
        wrapped(torch.ones(2), eps)
