"""Single-GPU scenarios from shared/research/device_failures.md, each comparable against eager.

Used by tests/gpu/test_gpu_core.py (asserts trt_multidev passes) and benchmarks/catalog.py (runs
trt_multidev and plain torch_tensorrt side by side and records what each does).
"""

from __future__ import annotations

import threading
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn as nn

import trt_multidev_backend as tm

tm.register()  # by name also from a source checkout (no entry point installed)
DEV = torch.device("cuda", 0)


@dataclass
class Outcome:
    ok: bool
    detail: str = ""
    rel_error: float | None = None
    out_device: str | None = None
    extra: dict = field(default_factory=dict)


def rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.detach().float().cpu(), ref.detach().float().cpu()
    return float((out - ref).norm() / ref.norm().clamp_min(1e-12))


def compile_with(model: nn.Module, backend: str, dynamic: bool | None = None, **options: Any) -> Callable[..., Any]:
    """torch.compile with `backend` ("trt_multidev" or plain "torch_tensorrt"), small blocks allowed."""
    if backend == "torch_tensorrt":
        import torch_tensorrt  # noqa: F401  (registers the backend)
    return torch.compile(model, backend=backend, dynamic=dynamic, options={"min_block_size": 1, **options})


# --- models -------------------------------------------------------------------------------
class CpuAttribute(nn.Module):
    """S13 / the measured failure: a plain CPU tensor attribute moved inside forward."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 64)
        self.table = torch.linspace(-1, 1, 64)  # not a buffer: stays on the CPU after .cuda()

    def forward(self, x):
        return torch.relu(self.fc(x)) + self.table.to(x.device)


class EmptyLike(nn.Module):
    """S05: ops lowered to empty_like / empty_strided / empty_permuted."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(32, 32)

    def forward(self, x):
        t = self.fc(x).permute(0, 2, 1)
        buf = torch.empty_like(t)
        buf.copy_(t * 2)
        return buf.relu() + x.new_zeros(1)


class MaskInForward(nn.Module):
    """S06: a mask built in forward with factories that name no device."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(16, 16)

    def forward(self, x):
        n = x.shape[-1]
        mask = torch.triu(torch.ones(n, n), 1).bool().to(x.device)
        pos = torch.arange(n).to(x.device)
        return self.fc(x).masked_fill(mask, 0.0) + pos


class HostWork(nn.Module):
    """S12: a small piece of work kept on the host on purpose."""

    def __init__(self) -> None:
        super().__init__()
        self.gpu = nn.Linear(32, 32)
        self.host = nn.Linear(32, 8)  # stays on the CPU

    def forward(self, x):
        y = torch.relu(self.gpu(x))
        return y * 2, self.host(y.to("cpu"))


class Mlp(nn.Module):
    def __init__(self, width: int = 256) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.Linear(width, width), nn.LayerNorm(width))

    def forward(self, x):
        return self.net(x) + x


# --- scenario runners ----------------------------------------------------------------------
def _compare(out: Any, ref: Any, tol: float) -> Outcome:
    outs = out if isinstance(out, (tuple, list)) else (out,)
    refs = ref if isinstance(ref, (tuple, list)) else (ref,)
    worst = 0.0
    for o, r in zip(outs, refs):
        if o.device != r.device:
            return Outcome(False, f"output on {o.device}, eager returns {r.device}", out_device=str(o.device))
        worst = max(worst, rel_error(o, r))
    ok = worst <= tol
    return Outcome(ok, "" if ok else f"relative error {worst:.2e} > {tol:.0e}", worst,
                   ",".join(str(o.device) for o in outs))


def _guarded(fn: Callable[[], Outcome]) -> Outcome:
    try:
        return fn()
    except Exception as exc:  # the catalog records how a backend fails
        last = traceback.format_exception_only(type(exc), exc)[-1].strip()
        return Outcome(False, last[:400])


def s13_cpu_attribute(backend: str) -> Outcome:
    def run() -> Outcome:
        model = CpuAttribute().eval().to(DEV)
        x = torch.randn(8, 64, device=DEV)
        with torch.no_grad():
            return _compare(compile_with(model, backend)(x), model(x), 1e-2)
    return _guarded(run)


def s05_empty_like(backend: str) -> Outcome:
    def run() -> Outcome:
        model = EmptyLike().eval().to(DEV)
        x = torch.randn(4, 16, 32, device=DEV)
        with torch.no_grad():
            return _compare(compile_with(model, backend)(x), model(x), 1e-2)
    return _guarded(run)


def s06_mask_in_forward(backend: str) -> Outcome:
    def run() -> Outcome:
        model = MaskInForward().eval().to(DEV)
        x = torch.randn(4, 16, 16, device=DEV)
        with torch.no_grad():
            return _compare(compile_with(model, backend)(x), model(x), 1e-2)
    return _guarded(run)


def s07_cpu_model_device_override(backend: str) -> Outcome:
    """S07/S08: a CPU model compiled with device=cuda:0: computed on the GPU, returned on the CPU."""
    def run() -> Outcome:
        model = Mlp(64).eval()
        x = torch.randn(8, 64)
        with torch.no_grad():
            return _compare(compile_with(model, backend, device="cuda:0")(x), model(x), 1e-2)
    return _guarded(run)


def s12_host_work(backend: str) -> Outcome:
    def run() -> Outcome:
        model = HostWork().eval()
        model.gpu.to(DEV)
        x = torch.randn(8, 32, device=DEV)
        with torch.no_grad():
            return _compare(compile_with(model, backend)(x), model(x), 1e-2)
    return _guarded(run)


def s14_user_stream(backend: str, iters: int = 200) -> Outcome:
    def run() -> Outcome:
        model = Mlp().eval().to(DEV)
        compiled = compile_with(model, backend)
        xs = [torch.randn(64, 256, device=DEV) for _ in range(8)]
        with torch.no_grad():
            refs = [model(x) for x in xs]
            compiled(xs[0])
            stream = torch.cuda.Stream(DEV)
            stream.wait_stream(torch.cuda.current_stream(DEV))
            outs = []
            with torch.cuda.stream(stream):
                for i in range(iters):
                    outs.append(compiled(xs[i % len(xs)]))
            torch.cuda.current_stream(DEV).wait_stream(stream)
            torch.cuda.synchronize(DEV)
        worst = max(rel_error(o, refs[i % len(xs)]) for i, o in enumerate(outs))
        return Outcome(worst < 1e-2, f"worst relative error {worst:.2e} over {iters} calls", worst)
    return _guarded(run)


def s15_four_threads(backend: str, calls: int = 100) -> Outcome:
    def run() -> Outcome:
        model = Mlp().eval().to(DEV)
        compiled = compile_with(model, backend)
        xs = [torch.randn(32, 256, device=DEV) for _ in range(4)]
        with torch.no_grad():
            refs = [model(x) for x in xs]
            compiled(xs[0])
        errors: list[float] = []
        failures: list[str] = []

        def worker(i: int) -> None:
            try:
                with torch.no_grad():
                    for _ in range(calls):
                        errors.append(rel_error(compiled(xs[i]), refs[i]))
            except Exception as exc:
                failures.append(f"{type(exc).__name__}: {exc}")

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if failures:
            return Outcome(False, failures[0][:400])
        worst = max(errors)
        return Outcome(worst < 1e-2, f"worst relative error {worst:.2e} over {len(errors)} calls", worst)
    return _guarded(run)


def s18_current_device_unchanged(backend: str) -> Outcome:
    def run() -> Outcome:
        before = torch.cuda.current_device()
        model = Mlp().eval().to(DEV)
        compiled = compile_with(model, backend)
        with torch.no_grad():
            compiled(torch.randn(4, 256, device=DEV))
            after_compile = torch.cuda.current_device()
            compiled(torch.randn(4, 256, device=DEV))
        after_call = torch.cuda.current_device()
        ok = before == after_compile == after_call
        return Outcome(ok, f"current device {before} -> {after_compile} -> {after_call}"
                       + (" (one GPU: a weak check; the two-GPU run makes it meaningful)" if torch.cuda.device_count() < 2 else ""))
    return _guarded(run)


def wrong_device_input(backend: str) -> Outcome:
    """What a caller sees when a CPU tensor reaches a graph compiled for cuda:0.

    Through torch.compile, dynamo's guards recompile on the new input device and dynamo's own
    tracing reports the mismatch; the compiled callable itself (what a backend returns, used
    directly by aot tools) is where trt_multidev's check speaks.
    """
    def run() -> Outcome:
        model = Mlp(64).eval().to(DEV)
        gm = torch.fx.symbolic_trace(model)
        x = torch.randn(4, 64, device=DEV)
        if backend == "torch_tensorrt":
            import torch_tensorrt
            from torch_tensorrt.dynamo.backend.backends import torch_tensorrt_backend

            from torch._guards import TracingContext, tracing
            from torch._subclasses.fake_tensor import FakeTensorMode

            with tracing(TracingContext(FakeTensorMode(allow_non_fake_inputs=True))):
                compiled = torch_tensorrt_backend(gm, [x], options={"min_block_size": 1})
            del torch_tensorrt
        else:
            import trt_multidev_backend as tm

            compiled = tm.backend(gm, [x], options={"min_block_size": 1, "strict": True})
        with torch.no_grad():
            compiled(x)
            try:
                out = compiled(x.cpu())
            except Exception as exc:
                text = f"{type(exc).__name__}: {exc}"
                clear = "argument 'x' is on cpu" in text and "compiled for cuda:0" in text
                return Outcome(clear, text[:400])
        out = out[0] if isinstance(out, (tuple, list)) else out
        return Outcome(False, f"no error; output on {out.device}")
    return _guarded(run)


def dynamic_batch(backend: str, how: str = "mark_dynamic") -> Outcome:
    """One compile serving several batch sizes: mark_dynamic (a TensorRT profile) or dynamic=True."""
    def run() -> Outcome:
        model = Mlp().eval().to(DEV)
        compiled = compile_with(model, backend, dynamic=True if how == "dynamic=True" else None)
        worst = 0.0
        with torch.no_grad():
            for batch in (2, 5, 16, 33):
                x = torch.randn(batch, 256, device=DEV)
                if how == "mark_dynamic":
                    torch._dynamo.mark_dynamic(x, 0, min=1, max=64)
                out = compiled(x)
                if out.device != DEV:
                    return Outcome(False, f"batch {batch}: output on {out.device}")
                worst = max(worst, rel_error(out, model(x)))
        exact = " (exactly eager's bits: nothing ran in TensorRT)" if worst == 0.0 else ""
        return Outcome(worst < 1e-2 and worst > 0.0, f"{how}, batches 2,5,16,33: worst relative error {worst:.2e}{exact}", worst)
    return _guarded(run)


CATALOG: dict[str, tuple[str, Callable[[str], Outcome]]] = {
    "S13": ("CPU tensor attribute moved in forward", s13_cpu_attribute),
    "S05": ("empty_like on a permuted tensor", s05_empty_like),
    "S06": ("mask built in forward without a device", s06_mask_in_forward),
    "S07/S08": ("CPU model, device=cuda:0: computed on GPU, returned on CPU", s07_cpu_model_device_override),
    "S12": ("deliberate host work stays on the host", s12_host_work),
    "S14": ("calls inside a user stream", s14_user_stream),
    "S15": ("four threads share one compiled module", s15_four_threads),
    "S18": ("current device unchanged after compile and calls", s18_current_device_unchanged),
    "input": ("CPU input to a graph compiled for cuda:0 (compiled callable)", wrong_device_input),
    "dynamic": ("mark_dynamic batch sizes on one compile", dynamic_batch),
    "dynamic=True": ("dynamic=True batch sizes on one compile", lambda b: dynamic_batch(b, "dynamic=True")),
}
