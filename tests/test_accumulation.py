"""fp32 accumulation of fp16/bf16 matrix products (setting fp32_accumulation, accumulation.py):
what the delegate is handed, that each product then rounds once, and what is left alone."""

from __future__ import annotations

import pytest
import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F

from trt_multidev_backend.settings import SettingsError, resolve_settings


class Products(nn.Module):
    """The products decoder LMs are made of: linear layers (with and without bias), an
    activation-by-activation matmul (attention scores), a batched one through `@`, and addmm."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(16, 16)
        self.head = nn.Linear(16, 16, bias=False)
        self.register_buffer("bias", torch.randn(16))

    def forward(self, x):
        h = self.fc(x)                                   # (2, 5, 16)
        scores = torch.matmul(h, h.transpose(1, 2))      # (2, 5, 5)
        mixed = scores.softmax(-1) @ h                   # (2, 5, 16)
        flat = torch.addmm(self.bias, mixed.flatten(0, 1), self.head.weight)
        return self.head(flat.view_as(x) + x)


def reference(model: Products, x: torch.Tensor) -> torch.Tensor:
    """The same computation with every product from fp32 inputs, rounded once to x's dtype."""
    low, f = x.dtype, (lambda t: t.float())
    h = F.linear(f(x), f(model.fc.weight), f(model.fc.bias)).to(low)
    scores = torch.matmul(f(h), f(h.transpose(1, 2))).to(low)
    mixed = (f(scores.softmax(-1)) @ f(h)).to(low)
    flat = torch.addmm(f(model.bias), f(mixed.flatten(0, 1)), f(model.head.weight)).to(low)
    return F.linear(f(flat.view_as(x) + x), f(model.head.weight)).to(low)


class Watching:
    """A test delegate that runs the graph it is handed, recording the dtypes each matrix product
    takes and gives."""

    PRODUCTS = {"linear", "matmul", "addmm", "mm", "bmm"}

    def __init__(self) -> None:
        self.products: list[tuple[str, tuple[torch.dtype, ...], torch.dtype]] = []

    def __call__(self, gm, example_inputs, *, device, settings):
        seen, self.gm = self.products, gm

        class Interpreter(torch.fx.Interpreter):
            def run_node(self, n):
                out = super().run_node(n)
                name = n.target if n.op == "call_method" else getattr(n.target, "__name__", "")
                if name in Watching.PRODUCTS:
                    args = [self.env[a] for a in n.all_input_nodes if isinstance(self.env[a], torch.Tensor)]
                    seen.append((name, tuple(a.dtype for a in args), out.dtype))
                return out

        def run(*args):
            seen.clear()
            return Interpreter(gm).run(*args)
        return run


def _compile(dtype, **options):
    torch.manual_seed(0)
    delegate, model = Watching(), Products().to(dtype).eval()
    x = torch.randn(2, 5, 16, dtype=dtype)
    with torch.no_grad():
        out = torch.compile(model, backend="trt_multidev", options={"delegate": delegate, **options})(x)
    return delegate, model, x, out


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_each_product_takes_fp32_inputs_and_rounds_once(dtype):
    delegate, model, x, out = _compile(dtype, fp32_accumulation=True)
    assert sorted(name for name, _, _ in delegate.products) == ["addmm", "linear", "linear", "matmul", "matmul"]
    assert all(set(ins) == {torch.float32} and result == torch.float32 for _, ins, result in delegate.products)
    assert out.dtype == dtype
    with torch.no_grad():
        assert torch.equal(out, reference(model, x))


def test_products_without_a_bias_get_an_fp32_zero_bias_before_the_cast_back():
    """TensorRT-RTX folds cast, product, cast back into its fp16 product (H200, session 11: Llama's
    logits bit-identical with the casts alone); a bias between product and cast keeps the product
    in fp32. So every value cast back comes from a biased product: a real bias or zeros."""
    import operator

    delegate, _, _, _ = _compile(torch.float16, fp32_accumulation=True)
    backs = [n for n in delegate.gm.graph.nodes if n.op == "call_method" and n.target == "to"
             and n.args[1:] == (torch.float16,)]
    assert len(backs) == 5
    zeros = {n for n in delegate.gm.graph.nodes if n.target is torch.zeros}
    assert all(n.kwargs["dtype"] == torch.float32 for n in zeros) and len(zeros) == 3  # 2 matmul, 1 head
    for back in backs:
        value = back.args[0]
        name = getattr(value.target, "__name__", "")
        if value.target is operator.add:
            assert value.args[1] in zeros and getattr(value.args[0].target, "__name__", "") == "matmul"
        else:
            assert name in {"linear", "addmm"} and value.args[2] is not None


def test_a_symbolic_last_size_gets_no_zero_bias_and_the_log_says_so(caplog):
    """With dynamic shapes the attention scores' last size is the sequence length, a SymInt: no
    constant zeros fit it, so that product keeps the casts alone, which the note names; the
    result is still rounded once."""
    import logging

    torch.manual_seed(0)
    delegate, model = Watching(), Products().half().eval()
    x = torch.randn(2, 5, 16, dtype=torch.float16)
    with caplog.at_level(logging.INFO, logger="trt_multidev"), torch.no_grad():
        out = torch.compile(model, backend="trt_multidev", dynamic=True,
                            options={"delegate": delegate, "fp32_accumulation": True})(x)
        assert torch.equal(out, reference(model, x))
    assert len({n for n in delegate.gm.graph.nodes if n.target is torch.zeros}) == 2  # mixed, head
    assert any("1 of them with a symbolic last size got no zero bias" in r.getMessage() for r in caplog.records)


def test_off_by_default_the_delegate_gets_the_products_as_they_are():
    delegate, model, x, out = _compile(torch.float16)
    assert len(delegate.products) == 5
    assert all(set(ins) == {torch.float16} for _, ins, _ in delegate.products)
    with torch.no_grad():
        assert torch.equal(out, model(x))


def test_fp32_graphs_are_left_alone():
    delegate, model, x, out = _compile(torch.float32, fp32_accumulation=True)
    assert all(set(ins) == {torch.float32} for _, ins, _ in delegate.products)
    with torch.no_grad():
        assert torch.equal(out, model(x))


def test_the_rewrite_is_logged(caplog):
    import logging

    with caplog.at_level(logging.INFO, logger="trt_multidev"):
        _compile(torch.float16, fp32_accumulation=True)
    assert any("fp32 accumulation: 1 addmm, 2 linear, 2 matmul computed from fp32 inputs" in r.getMessage()
               for r in caplog.records)


def test_torch_tensorrts_own_name_for_it_points_to_the_setting():
    with pytest.raises(SettingsError, match="'use_fp32_acc' is owned by the top-level setting 'fp32_accumulation'"):
        resolve_settings({"trt": {"use_fp32_acc": True}}, environ={})
    assert resolve_settings({}, environ={"TRT_MULTIDEV_FP32_ACCUMULATION": "1"}).fp32_accumulation is True


def test_on_a_fake_gpu_the_casts_stay_on_its_device(fake_mode):
    """Placed on a fake cuda:1: the inserted casts keep the graph on cuda:1 (the engine-like
    delegate propagates FakeTensors, which raise on any device mix)."""
    from helpers import EngineLikeDelegate, fake, on_fake_device

    delegate = EngineLikeDelegate()
    model = on_fake_device(Products().eval(), "cuda:1", fake_mode, dtype=torch.float16)
    model.bias = model.bias.to(torch.float16)  # on_fake_device's dtype is for parameters
    out = torch.compile(model, backend="trt_multidev", options={"delegate": delegate, "fp32_accumulation": True})(
        fake(fake_mode, 2, 5, 16, device="cuda:1", dtype=torch.float16))
    (call,) = delegate.calls
    assert out.device == torch.device("cuda", 1) and out.dtype == torch.float16
    assert "to(torch.float32)" in call.code and call.code.count("to(torch.float16)") == 5  # one per product


def test_constants_are_read_from_the_module_and_inputs_of_unknown_dtype_stop_the_rewrite():
    """A constant without recorded metadata is read from the module; where an input's dtype is
    not known at all, the product is left as it is (widening only the others would mix dtypes)."""
    from trt_multidev_backend.accumulation import accumulate_in_fp32

    class Constant(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.randn(4, 4, dtype=torch.float16))

        def forward(self, x):
            return F.linear(x, self.w)

    def traced(x_known: bool) -> torch.fx.GraphModule:
        gm = torch.fx.symbolic_trace(Constant())
        x = torch.randn(2, 4, dtype=torch.float16)
        for node in gm.graph.nodes:  # symbolic_trace records nothing: say what tracing would have
            if node.op == "call_function" or (node.op == "placeholder" and x_known):
                node.meta["val"] = x if node.op == "placeholder" else F.linear(x, gm.w)
        return gm

    gm = traced(x_known=True)
    assert accumulate_in_fp32(gm) == ["fp32 accumulation: 1 linear computed from fp32 inputs, rounded once"]
    assert gm.code.count("to(torch.float32)") == 2
    gm = traced(x_known=False)
    assert accumulate_in_fp32(gm) == [] and "float32" not in gm.code
