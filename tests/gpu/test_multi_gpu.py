"""Two-GPU scenarios (device_failures.md S01, S03, S04, S05, S16, S17, S18) and cross-GPU reuse.

Marked `multi_gpu`: they skip below two GPUs. MULTI_GPU_DRY_RUN=1 runs them on one GPU with both
"GPUs" being cuda:0, to check the scripts themselves (not the two-GPU behaviour). Run the whole
file also under CUDA_VISIBLE_DEVICES=1 (one visible GPU), which must pass too; see
benchmarks/multi_gpu_session.sh.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn as nn

import trt_multidev_backend as tm
from scenarios import EmptyLike, Mlp, rel_error

pytestmark = pytest.mark.multi_gpu
DRY = os.environ.get("MULTI_GPU_DRY_RUN") == "1"
FIRST = torch.device("cuda", 0)
SECOND = torch.device("cuda", 0 if DRY else 1)
OPTIONS = {"min_block_size": 1}


def no_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.startswith("trt_multidev") and r.levelno >= 30]


def test_s01_model_on_second_gpu_while_first_is_current(caplog):
    torch.cuda.set_device(FIRST)
    model = Mlp().eval().to(SECOND)
    x = torch.randn(16, 256, device=SECOND)
    with torch.no_grad():
        out = torch.compile(model, backend="trt_multidev", options=OPTIONS)(x)
        ref = model(x)
    assert out.device == SECOND and rel_error(out, ref) < 1e-2
    assert torch.cuda.current_device() == FIRST.index
    assert tm.stats()[str(SECOND)]["compiles"] == 1 and no_warnings(caplog) == []


def test_s01_device_setting_moves_a_first_gpu_model_and_returns_there():
    torch.cuda.set_device(FIRST)
    model = Mlp().eval().to(FIRST)
    x = torch.randn(16, 256, device=FIRST)
    with torch.no_grad():
        out = torch.compile(model, backend="trt_multidev", options={**OPTIONS, "device": str(SECOND)})(x)
        ref = model(x)
    assert out.device == FIRST and rel_error(out, ref) < 1e-2  # computed on SECOND, returned where eager returns
    assert tm.stats()[str(SECOND)]["compiles"] == 1


def test_s04_two_models_one_per_gpu_interleaved():
    a, b = Mlp().eval().to(FIRST), Mlp().eval().to(SECOND)
    fa = torch.compile(a, backend="trt_multidev", options=OPTIONS)
    fb = torch.compile(b, backend="trt_multidev", options=OPTIONS)
    xa, xb = torch.randn(8, 256, device=FIRST), torch.randn(8, 256, device=SECOND)
    with torch.no_grad():
        ra, rb = a(xa), b(xb)
        for i in range(50):
            torch.cuda.set_device(FIRST if i % 2 else SECOND)  # whatever is current
            oa, ob = fa(xa), fb(xb)
            assert oa.device == FIRST and ob.device == SECOND
            assert rel_error(oa, ra) < 1e-2 and rel_error(ob, rb) < 1e-2


def test_s05_empty_like_on_the_second_gpu(caplog):
    torch.cuda.set_device(FIRST)
    model = EmptyLike().eval().to(SECOND)
    x = torch.randn(4, 16, 32, device=SECOND)
    with torch.no_grad():
        out = torch.compile(model, backend="trt_multidev", options=OPTIONS)(x)
        assert out.device == SECOND and rel_error(out, model(x)) < 1e-2
    assert no_warnings(caplog) == []


class TwoStage(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(64, 64).to(FIRST)
        self.b = nn.Linear(64, 64).to(SECOND)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)).to(SECOND))


def test_s03_one_graph_across_two_gpus_runs_a_stage_per_gpu(caplog):
    model = TwoStage().eval()
    x = torch.randn(8, 64, device=FIRST)
    torch.cuda.set_device(FIRST)
    with torch.no_grad():
        out = torch.compile(model, backend="trt_multidev", options=OPTIONS)(x)
        assert out.device == SECOND and rel_error(out, model(x)) < 1e-2
    assert no_warnings(caplog) == [] and torch.cuda.current_device() == FIRST.index
    if not DRY:  # one engine per GPU, no fallback
        counts = tm.stats()
        assert counts[str(FIRST)]["compiles"] == 1 and counts[str(SECOND)]["compiles"] == 1
        assert counts[str(FIRST)]["fallbacks"] == 0 and counts[str(SECOND)]["fallbacks"] == 0


def test_s18_current_device_unchanged_after_compile_load_and_calls(tmp_path, monkeypatch):
    monkeypatch.setenv("TRT_MULTIDEV_CACHE_DIR", str(tmp_path))
    torch.cuda.set_device(FIRST)
    model = Mlp().eval().to(SECOND)
    x = torch.randn(4, 256, device=SECOND)
    with torch.no_grad():
        torch.compile(model, backend="trt_multidev", options=OPTIONS)(x)
        assert torch.cuda.current_device() == FIRST.index
        torch._dynamo.reset()  # the next compile loads from disk
        torch.compile(model, backend="trt_multidev", options=OPTIONS)(x)
    assert torch.cuda.current_device() == FIRST.index
    assert tm.stats()[str(SECOND)]["disk_hits"] == 1


def replicated_with_one_build(model: nn.Module, x: torch.Tensor) -> None:
    """Replicas on both GPUs: one build, the second GPU loading it, each matching eager."""
    replicas = tm.replicate(model, [FIRST, SECOND], example_inputs=(x,), options=OPTIONS)
    counts = tm.stats()
    assert sum(c["compiles"] for c in counts.values()) == 1
    if not DRY:
        assert counts[str(SECOND)]["cross_device_reuses"] == 1
    with torch.no_grad():
        for replica in replicas:
            assert rel_error(replica(x), model(x)) < 1e-2


def test_cross_gpu_reuse_builds_once():
    replicated_with_one_build(Mlp().eval(), torch.randn(8, 256))


class Positions(nn.Module):
    """A position embedding looked up by `arange` on the input's device, as GPT-2's: the graph
    names its GPU, so another GPU's build must be moved to run there."""

    def __init__(self) -> None:
        super().__init__()
        self.pos = nn.Embedding(64, 256)
        self.mlp = Mlp()

    def forward(self, x):
        return self.mlp(x + self.pos(torch.arange(x.shape[1], device=x.device)))


def test_cross_gpu_reuse_moves_a_graph_that_names_its_device(caplog):
    replicated_with_one_build(Positions().eval(), torch.randn(4, 16, 256))
    assert no_warnings(caplog) == []


CHILD = textwrap.dedent("""
    import json, sys, torch, trt_multidev_backend as tm
    sys.path.insert(0, "tests/gpu")
    from scenarios import Mlp, rel_error
    device = torch.device(sys.argv[1])
    model = Mlp().eval().to(device)
    x = torch.randn(16, 256, device=device)
    with torch.no_grad():
        out = torch.compile(model, backend="trt_multidev", options={"min_block_size": 1})(x)
        print("RESULT", json.dumps({"err": rel_error(out, model(x)), "stats": tm.stats()[str(device)]}))
""")


def test_s17_two_processes_share_one_cache_directory(tmp_path):
    env = {**os.environ, "TRT_MULTIDEV_CACHE_DIR": str(tmp_path)}
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, str(d)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for d in (FIRST, SECOND)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-2000:]
        line = [l for l in out.splitlines() if l.startswith("RESULT ")][-1]
        results.append(json.loads(line[len("RESULT "):]))
    assert all(r["err"] < 1e-2 for r in results)
    assert sum(r["stats"]["compiles"] for r in results) == 1  # one build, one load
    assert sum(r["stats"]["disk_hits"] for r in results) == 1


def test_s16_torchrun_without_set_device(tmp_path):
    nproc = "1" if DRY else "2"
    env = {**os.environ, "TRT_MULTIDEV_CACHE_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", nproc,
                          "examples/torchrun_inference.py"], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [l for l in out.stdout.splitlines() if l.startswith("rank ")]
    assert len(lines) == int(nproc)
    import re

    for line in lines:
        rank = line.split()[1]
        assert f"'cuda:{rank}'" in line  # each rank compiled for its own GPU (cuda:LOCAL_RANK)
        assert float(re.search(r"relative error ([0-9.e+-]+)", line).group(1)) < 1e-2


def test_hf_gpt2_placed_on_two_gpus_by_accelerate_runs_a_stage_per_gpu(caplog):
    """A transformers model from a config (random weights, nothing downloaded), split across two
    GPUs by accelerate's dispatch_model: eager-equal, engines on both GPUs, no fallback."""
    transformers = pytest.importorskip("transformers")
    accelerate = pytest.importorskip("accelerate")
    if DRY:
        pytest.skip("needs two real GPUs")
    config = transformers.GPT2Config(n_layer=4, n_embd=256, n_head=4, vocab_size=1000, n_positions=128,
                                     tie_word_embeddings=False)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config).eval().half()
    first = ["transformer.wte", "transformer.wpe", "transformer.drop", "transformer.h.0", "transformer.h.1"]
    second = ["transformer.h.2", "transformer.h.3", "transformer.ln_f", "lm_head"]
    model = accelerate.dispatch_model(model, device_map={**dict.fromkeys(first, 0), **dict.fromkeys(second, 1)})
    ids = torch.randint(0, 1000, (2, 64), device=FIRST)
    torch.cuda.set_device(FIRST)
    with torch.no_grad():
        ref = model(ids, use_cache=False).logits
        out = torch.compile(model, backend="trt_multidev", options=OPTIONS)(ids, use_cache=False).logits
    assert out.device == ref.device and rel_error(out, ref) < 2e-2
    counts = tm.stats()
    assert counts[str(FIRST)]["compiles"] >= 1 and counts[str(SECOND)]["compiles"] >= 1
    assert all(c["fallbacks"] == 0 for c in counts.values()) and no_warnings(caplog) == []
    assert torch.cuda.current_device() == FIRST.index


@pytest.mark.skipif(torch.cuda.device_count() < 4, reason="needs four GPUs")
def test_transformer_stack_on_four_gpus_runs_a_stage_per_gpu(caplog):
    devices = [torch.device("cuda", i) for i in range(4)]

    class Stack(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = nn.ModuleList(
                nn.TransformerEncoderLayer(256, 4, 1024, batch_first=True, dropout=0.0).to(d) for d in devices)

        def forward(self, x):
            for layer, device in zip(self.layers, devices):
                x = layer(x.to(device))
            return x

    torch.manual_seed(0)
    model = Stack().eval().half()
    x = torch.randn(4, 64, 256, device=devices[0], dtype=torch.half)
    torch.cuda.set_device(FIRST)
    with torch.no_grad():
        out = torch.compile(model, backend="trt_multidev", options=OPTIONS)(x)
        assert out.device == devices[-1] and rel_error(out, model(x)) < 2e-2
    counts = tm.stats()
    assert all(counts[str(d)]["compiles"] + counts[str(d)]["cross_device_reuses"] >= 1 for d in devices)
    assert all(c["fallbacks"] == 0 for c in counts.values()) and no_warnings(caplog) == []
    torch._dynamo.reset()
    import gc

    gc.collect()
    assert torch.cuda.current_device() == FIRST.index
