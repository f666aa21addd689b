"""A seeded soak of a long-lived process on every visible GPU: does every engine stay on its GPU,
and does the caller's current device stay put, whatever was compiled, called and released before?

    python benchmarks/multi_gpu_soak.py --out DIR [--steps 300] [--seed 0] [--gpus N]

Random steps, each followed by checks: compile one of a few small models on a random GPU (both
engine runtimes; the disk cache is shared, so later compiles of a model load another GPU's build),
call every live compiled model from one thread per GPU on user streams, drop a compiled model,
`trt_multidev_backend.reset()`, `torch._dynamo.reset()`, `gc.collect()`, `replicate()` on every GPU,
and compiles in a second process sharing the disk cache. After every step: outputs match eager and
are on the model's GPU, the caller's current device (PyTorch's and the CUDA runtime's) is the one
it set, no CUDA error. Writes DIR/multi_gpu_soak.json with gpus, steps, failures, device_changes,
wrong_device_engines, fallbacks, the seed, versions and GPU names.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import logging
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, HERE)

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

import trt_multidev_backend as tm  # noqa: E402
from gpu_bench import rel_error  # noqa: E402
from trt_multidev_backend.guard import real_device  # noqa: E402

tm.register()
for _name in ("recompile_limit", "cache_size_limit"):  # each compile is a new module: no eager by limit
    if hasattr(torch._dynamo.config, _name):
        setattr(torch._dynamo.config, _name, 100_000)
RUNTIMES = ("auto", "torch_tensorrt")


class Mlp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(256, 512), nn.Linear(512, 256)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


class Conv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 8, 3, padding=1)

    def forward(self, x):
        return self.c2(torch.relu(self.c1(x))).mean(dim=(2, 3))


class Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.qkv, self.out = nn.Linear(64, 192), nn.Linear(64, 64)

    def forward(self, x):
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        w = torch.softmax(q @ k.transpose(-1, -2) / 8.0, dim=-1)
        return self.out(w @ v) + x


MODELS = {"mlp": (Mlp, (16, 256)), "conv": (Conv, (4, 3, 32, 32)), "attention": (Attention, (2, 32, 64))}


class Recorder(logging.Handler):
    """Counts trt_multidev's warnings: a wrong-GPU engine, any fallback."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.wrong_device = 0
        self.fallbacks: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "but this graph was compiled for" in message:
            self.wrong_device += 1
        if "fallback" in message:
            self.fallbacks.append(message[:300])


CHILD = """
import json, sys, torch
sys.path.insert(0, {here!r})
import multi_gpu_soak as soak, trt_multidev_backend as tm
name, device, runtime = sys.argv[1], torch.device(sys.argv[2]), sys.argv[3]
build, shape = soak.MODELS[name]
torch.manual_seed(0)
model = build().eval().to(device)
x = torch.randn(*shape, device=device)
with torch.no_grad():
    out = torch.compile(model, backend="trt_multidev", options={{"min_block_size": 1, "engine_runtime": runtime}})(x)
    print("RESULT", json.dumps({{"err": soak.rel_error(out, model(x)), "device": str(out.device),
                                 "stats": tm.stats().get(str(device), {{}})}}))
"""


class Soak:
    def __init__(self, gpus: int, seed: int, caller: int) -> None:
        self.gpus = gpus
        self.rng = random.Random(seed)
        self.caller = caller
        self.live: dict[int, dict] = {}
        self.next_id = 0
        self.failures: list[str] = []
        self.device_changes = 0
        self.counts: dict[str, int] = {}
        self.children = 0
        self.done = 0
        self.on_progress: Any = None

    # -- steps ---------------------------------------------------------------------------
    def compile(self) -> None:
        name = self.rng.choice(sorted(MODELS))
        device = torch.device("cuda", self.rng.randrange(self.gpus))
        runtime = self.rng.choice(RUNTIMES)
        build, shape = MODELS[name]
        torch.manual_seed(self.rng.randrange(1000))
        module = build().eval().to(device)
        x = torch.randn(*shape, device=device)
        compiled = torch.compile(module, backend="trt_multidev",
                                 options={"min_block_size": 1, "engine_runtime": runtime})
        with torch.no_grad():
            out, ref = compiled(x), module(x)
        self.check(f"compile {name} on {device} ({runtime})", out, ref, device)
        self.live[self.next_id] = {"name": name, "device": device, "compiled": compiled, "module": module,
                                   "x": x, "ref": ref}
        self.next_id += 1

    def call_from_threads(self) -> None:
        by_gpu: dict[int, list[dict]] = {}
        for entry in self.live.values():
            by_gpu.setdefault(entry["device"].index, []).append(entry)
        errors: list[str] = []

        def worker(index: int, entries: list[dict]) -> None:
            try:
                start = torch.cuda.current_device(), real_device()
                stream = torch.cuda.Stream(torch.device("cuda", index))
                with torch.cuda.stream(stream), torch.no_grad():
                    for _ in range(3):
                        for entry in entries:
                            out = entry["compiled"](entry["x"])
                            stream.synchronize()
                            if out.device != entry["device"] or rel_error(out, entry["ref"]) > 2e-2:
                                errors.append(f"thread call {entry['name']} on {entry['device']}: "
                                              f"{out.device}, error {rel_error(out, entry['ref']):.2e}")
                if (torch.cuda.current_device(), real_device()) != start:
                    errors.append(f"thread for cuda:{index}: device {start} -> "
                                  f"{(torch.cuda.current_device(), real_device())}")
            except Exception as exc:
                errors.append(f"thread for cuda:{index}: {type(exc).__name__}: {str(exc)[:200]}")

        threads = [threading.Thread(target=worker, args=item) for item in by_gpu.items()]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.failures.extend(errors)

    def drop(self) -> None:
        if self.live:
            del self.live[self.rng.choice(sorted(self.live))]

    def reset(self) -> None:
        tm.reset()

    def dynamo_reset(self) -> None:
        self.live.clear()  # dynamo's caches go: the compiled callables would recompile
        torch._dynamo.reset()

    def collect(self) -> None:
        gc.collect()

    def replicate(self) -> None:
        name = self.rng.choice(sorted(MODELS))
        build, shape = MODELS[name]
        model = build().eval()
        x = torch.randn(*shape)
        replicas = tm.replicate(model, [torch.device("cuda", i) for i in range(self.gpus)],
                                example_inputs=(x,), options={"min_block_size": 1})
        with torch.no_grad():
            ref = model(x)
            for replica in replicas:
                self.check(f"replica {name} on {replica.device}", replica(x), ref, replica.device)

    def second_process(self) -> None:
        name = self.rng.choice(sorted(MODELS))
        device = f"cuda:{self.rng.randrange(self.gpus)}"
        runtime = self.rng.choice(RUNTIMES)
        self.children += 1
        out = subprocess.run([sys.executable, "-c", CHILD.format(here=HERE), name, device, runtime],
                             capture_output=True, text=True, timeout=600)
        lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
        if out.returncode != 0 or not lines:
            self.failures.append(f"second process {name} on {device}: {(out.stderr.strip().splitlines() or ['?'])[-1]}")
            return
        result = json.loads(lines[-1][len("RESULT "):])
        if result["err"] > 2e-2 or result["device"] != device:
            self.failures.append(f"second process {name} on {device}: {result}")

    # -- checks --------------------------------------------------------------------------
    def check(self, what: str, out: torch.Tensor, ref: torch.Tensor, device: torch.device) -> None:
        if out.device != device:
            self.failures.append(f"{what}: output on {out.device}")
        elif rel_error(out, ref) > 2e-2:
            self.failures.append(f"{what}: relative error {rel_error(out, ref):.2e}")

    def check_device(self, step: str) -> None:
        now = torch.cuda.current_device(), real_device()
        if now != (self.caller, self.caller):
            self.device_changes += 1
            self.failures.append(f"after {step}: current device {now}, expected cuda:{self.caller}")
            torch.cuda.set_device(self.caller)

    def run(self, steps: int) -> None:
        actions = [(self.compile, 30), (self.call_from_threads, 20), (self.drop, 12), (self.reset, 8),
                   (self.dynamo_reset, 6), (self.collect, 12), (self.replicate, 6), (self.second_process, 2)]
        names = [a.__name__ for a, _ in actions]
        weights = [w for _, w in actions]
        for step in range(steps):
            action = self.rng.choices(range(len(actions)), weights)[0]
            name = names[action]
            self.counts[name] = self.counts.get(name, 0) + 1
            try:
                actions[action][0]()
                torch.cuda.synchronize()
            except Exception as exc:
                self.failures.append(f"step {step} {name}: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}")
                traceback.print_exc()
            self.check_device(f"step {step} {name}")
            self.done = step + 1
            if step % 25 == 0:
                print(f"step {step}: {len(self.live)} live, {len(self.failures)} failures", flush=True)
                if self.on_progress is not None:
                    self.on_progress()  # a run cut short still leaves its figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--gpus", type=int, default=0, help="how many GPUs (default: every visible one)")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    os.environ.setdefault("TRT_MULTIDEV_CACHE_DIR", tempfile.mkdtemp(prefix="soak-cache-"))
    gpus = args.gpus or torch.cuda.device_count()
    caller = gpus - 1  # the caller works on the last GPU; compiles land anywhere
    torch.cuda.set_device(caller)
    recorder = Recorder()
    logging.getLogger("trt_multidev").addHandler(recorder)
    soak = Soak(gpus, args.seed, caller)
    start = time.perf_counter()
    import torch_tensorrt

    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=HERE).stdout.strip()

    def write() -> dict:
        result = {
            "gpus": gpus, "steps": soak.done, "steps_asked": args.steps, "failures": len(soak.failures),
            "device_changes": soak.device_changes, "wrong_device_engines": recorder.wrong_device,
            "fallbacks": len(recorder.fallbacks), "seed": args.seed, "step_counts": soak.counts,
            "second_processes": soak.children, "failure_messages": soak.failures[:50],
            "fallback_messages": recorder.fallbacks[:20], "stats": tm.stats(),
            "seconds": round(time.perf_counter() - start, 1),
            "gpu_names": [torch.cuda.get_device_name(i) for i in range(gpus)],
            "versions": {"torch": torch.__version__, "torch_tensorrt": torch_tensorrt.__version__},
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "commit": commit or None,
        }
        with open(os.path.join(args.out, "multi_gpu_soak.json"), "w") as f:
            json.dump(result, f, indent=1)
        return result

    soak.on_progress = write
    soak.run(args.steps)
    result = write()
    print(json.dumps({k: result[k] for k in ("gpus", "steps", "failures", "device_changes", "wrong_device_engines",
                                             "fallbacks", "seconds")}))
    return 0 if not soak.failures and not recorder.wrong_device else 1


if __name__ == "__main__":
    sys.exit(main())
