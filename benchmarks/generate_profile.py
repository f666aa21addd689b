"""Where generate()'s time per token goes, per backend: host or GPU.

    python benchmarks/generate_profile.py --out DIR [--models gpt2,llama] [--runs 10] [--cache static] [--options JSON]

For each causal LM of real_models.py and each backend (eager, trt_multidev, inductor), in one
process on one GPU: generate() as real_models.py runs it (32 new tokens, greedy, KV cache), one
warm-up run (compiles) then `--runs` timed runs, each run's ms per token kept. Then one more run
with the compiled forward wrapped to time its host side (wall time from call to return, no
synchronisation: what the Python side of each call costs while the GPU runs behind it) and one under
torch.profiler (CUDA kernels only: their summed time and launches per token), and one under
cProfile: the host's self time per token by area (trt_multidev, transformers, dynamo, the rest of
torch, C functions such as TensorRT's enqueue) and the functions that took most of it (cProfile
slows Python down, so compare areas across backends, not with the timed runs). So a backend slower
than another per token shows whether its calls cost the host more (host_ms_per_call, host_areas)
or its kernels take longer (kernel_ms_per_token). Tokens are compared with eager's; where they
differ, first_difference gives eager's logit gap at that step (as real_models.py does). Writes generate_profile.json (GPU, versions,
date, commit, raw times).
"""

from __future__ import annotations

import argparse
import cProfile
import datetime
import json
import os
import statistics
import sys
import time
from typing import Any

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import real_models as rm  # noqa: E402  (puts the repository root on sys.path)
import trt_multidev_backend as tm  # noqa: E402

BACKENDS = ("eager", "trt_multidev", "inductor")


class HostTimed:
    """The forward generate() calls, with each call's host time (call to return) kept."""

    def __init__(self, forward: Any) -> None:
        self.forward = forward
        self.seconds: list[float] = []

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        out = self.forward(*args, **kwargs)
        self.seconds.append(time.perf_counter() - start)
        return out


def kernels_per_run(lm: torch.nn.Module, prompt: torch.Tensor, dev: torch.device,
                    cache: str | None) -> dict[str, float]:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        rm.timed_generate(lm, prompt, dev, cache)
    events = [e for e in prof.key_averages() if e.device_time_total > 0]
    return {"kernel_ms_per_token": sum(e.device_time_total for e in events) / 1e3 / rm.NEW_TOKENS,
            "launches_per_token": sum(e.count for e in events) / rm.NEW_TOKENS}


AREAS = (("trt_multidev_backend", "trt_multidev"), ("transformers", "transformers"),
         ("torch/_dynamo", "dynamo"), ("torch/_inductor", "inductor"), ("torch", "torch"))


def area_of(filename: str) -> str:
    """Which part of the stack a profiled function belongs to, by its file (C functions: "~")."""
    if filename == "~":
        return "C functions"
    path = filename.replace(os.sep, "/")
    for part, area in AREAS:
        if f"/{part}/" in path:
            return area
    return "other Python"


def host_areas(profiler: cProfile.Profile, tokens: int, top: int = 12) -> dict[str, Any]:
    """A cProfile run summed per token: self ms by area, and the `top` functions by self time."""
    import pstats

    table = pstats.Stats(profiler).stats  # (file, line, name) -> (calls, primitive calls, self s, cumulative s, callers)
    areas: dict[str, float] = {}
    for (filename, _, _), (_, _, self_s, _, _) in table.items():
        areas[area_of(filename)] = areas.get(area_of(filename), 0.0) + self_s
    heaviest = sorted(table.items(), key=lambda item: item[1][2], reverse=True)[:top]
    return {
        "self_ms_per_token": {area: round(1000 * s / tokens, 4) for area, s in sorted(areas.items(), key=lambda a: -a[1])},
        "top_functions": [{"function": f"{os.path.basename(f)}:{line}:{name}", "area": area_of(f),
                           "calls_per_token": round(calls / tokens, 2), "self_ms_per_token": round(1000 * self_s / tokens, 4),
                           "cumulative_ms_per_token": round(1000 * cum_s / tokens, 4)}
                          for (f, line, name), (_, calls, self_s, cum_s, _) in heaviest],
    }


def profile_backend(lm: torch.nn.Module, prompt: torch.Tensor, dev: torch.device, backend: str,
                    options: dict[str, Any], runs: int, cache: str | None = None) -> dict[str, Any]:
    torch._dynamo.reset()
    row: dict[str, Any] = {}
    try:
        if backend == "trt_multidev":
            tm.reset()
            compiled = torch.compile(lm.forward, backend="trt_multidev", options=options)
        elif backend == "inductor":
            compiled = torch.compile(lm.forward)
        else:
            compiled = lm.forward
        timed = HostTimed(compiled)
        lm.forward = timed
        row["first_run_s"] = round(rm.timed_generate(lm, prompt, dev, cache)[1], 3)
        tokens = [rm.timed_generate(lm, prompt, dev, cache) for _ in range(runs)]
        row["runs_ms_per_token"] = [round(s * 1000 / rm.NEW_TOKENS, 3) for _, s in tokens]
        row["ms_per_token"] = round(statistics.median(row["runs_ms_per_token"]), 3)
        row["tokens"] = tokens[-1][0][0].tolist()
        timed.seconds.clear()
        rm.timed_generate(lm, prompt, dev, cache)
        calls = sorted(timed.seconds)
        row["forward_calls_per_run"] = len(calls)
        row["host_ms_per_call"] = {"median": round(1000 * statistics.median(calls), 4),
                                   "max": round(1000 * calls[-1], 4)}
        row["host_ms_in_forward_per_token"] = round(1000 * sum(calls) / rm.NEW_TOKENS, 4)
        row.update({k: round(v, 4) for k, v in kernels_per_run(lm, prompt, dev, cache).items()})
        profiler = cProfile.Profile()
        profiler.enable()
        try:
            rm.timed_generate(lm, prompt, dev, cache)
        finally:
            profiler.disable()
        row["host_areas"] = host_areas(profiler, rm.NEW_TOKENS)
    except Exception as exc:
        row["error"] = rm.first_line(exc)
    finally:
        vars(lm).pop("forward", None)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--models", default="gpt2,llama")
    parser.add_argument("--backends", default=",".join(BACKENDS),
                        help="comma list of " + ", ".join(BACKENDS) + " (eager always runs: it is the reference)")
    parser.add_argument("--runs", type=int, default=10, help="timed generate() runs per backend (default 10)")
    parser.add_argument("--cache", default=None, choices=["static"], help="generate()'s cache_implementation")
    parser.add_argument("--device", default=None, help="cuda:N (default: as real_models.py)")
    parser.add_argument("--options", default="{}", type=json.loads, help="trt_multidev options, as JSON")
    args = parser.parse_args()
    models = rm.parse_list(args.models, rm.MODELS, "model")
    backends = ["eager"] + [b for b in rm.parse_list(args.backends, BACKENDS, "backend") if b != "eager"]
    dev, placement = rm.choose_device(args.device)
    options = {"cache": False, **args.options}
    os.makedirs(args.out, exist_ok=True)
    doc: dict[str, Any] = {
        "environment": rm.environment(dev), "placement": placement,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": rm.git("rev-parse", "HEAD"), "trt_multidev_options": options, "runs": args.runs, "cache_implementation": args.cache,
        "backends": backends,
        "models": {},
    }
    for name in models:
        case = rm.MODELS[name](dev)
        if case.lm is None:
            raise SystemExit(f"{name} is not a causal LM (no generate())")
        rm.seed_everything()
        prompt = rm._token_ids(case.vocab, (1, rm.PROMPT_TOKENS), dev)
        result = doc["models"][name] = {}
        for backend in backends:
            row = result[backend] = profile_backend(case.lm, prompt, dev, backend, options, args.runs, args.cache)
            if backend != "eager" and "tokens" in row and "tokens" in result["eager"]:
                row["same_tokens"] = row["tokens"] == result["eager"]["tokens"]
                if not row["same_tokens"]:  # a near-tie fp16 rounding flips, or a wrong model?
                    got, ref = (torch.tensor([t], device=dev) for t in (row["tokens"], result["eager"]["tokens"]))
                    row["first_difference"] = rm.first_difference(case.lm, prompt, got, ref,
                                                                  rm.matching_prefix(got, ref))
            print(name, backend, json.dumps({k: v for k, v in row.items() if k not in ("tokens", "host_areas")}),
                  json.dumps(row.get("host_areas", {}).get("self_ms_per_token")), flush=True)
        del case
        rm.free_memory()
        with open(os.path.join(args.out, "generate_profile.json"), "w") as f:
            json.dump(doc, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
