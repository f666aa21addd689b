"""The disk cache, with a real serializing CPU delegate (tests/_delegates.py:serializing)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

import trt_multidev_backend as tm
from helpers import EngineLikeDelegate, capture, counters, fake, on_fake_device
from trt_multidev_backend.cache import disk_key
from trt_multidev_backend.diskcache import CorruptEntry, DiskCache, identity_of
from trt_multidev_backend.settings import resolve_settings

TESTS = os.path.dirname(__file__)

SCRIPT = textwrap.dedent("""
    import json, os, sys, torch, torch.nn as nn
    import trt_multidev_backend as tm
    tm.register()
    torch.manual_seed(int(os.environ.get("SEED", "0")))
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4)).eval()
    x = torch.arange(16.0).reshape(2, 8) / 16
    with torch.no_grad():
        out = torch.compile(model, backend="trt_multidev", options={"delegate": "_delegates:serializing"})(x)
        ok = torch.allclose(out, model(x))
    print(json.dumps({"ok": bool(ok), "stats": tm.stats().get("cpu")}))
""")


def run_process(cache_dir: Path, **env: str) -> dict:
    full = {k: v for k, v in os.environ.items() if not k.startswith("TRT_MULTIDEV_")}
    full.update({"PYTHONPATH": TESTS, "TRT_MULTIDEV_CACHE_DIR": str(cache_dir), **env})
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=full, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    import json

    return {**json.loads(out.stdout.strip().splitlines()[-1]), "stderr": out.stderr}


def test_a_new_process_loads_instead_of_building(tmp_path):
    first = run_process(tmp_path)
    second = run_process(tmp_path)
    assert first["ok"] and second["ok"]
    assert first["stats"] == counters(compiles=1)
    assert second["stats"] == counters(disk_hits=1)


def test_other_weights_never_share_results(tmp_path):
    # Same architecture, other weights: the entry is shared (parameters are graph inputs), and
    # each process's output matches its own eager model.
    run_process(tmp_path, SEED="0")
    other = run_process(tmp_path, SEED="7")
    assert other["ok"] and other["stats"] == counters(disk_hits=1)


def test_four_processes_build_once(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRT_MULTIDEV_")}
    env.update({"PYTHONPATH": TESTS, "TRT_MULTIDEV_CACHE_DIR": str(tmp_path), "SERIALIZING_BUILD_SECONDS": "3"})
    procs = [subprocess.Popen([sys.executable, "-c", SCRIPT], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(4)]
    import json

    results = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert all(r["ok"] for r in results)
    assert sum(r["stats"]["compiles"] for r in results) == 1
    assert sum(r["stats"]["disk_hits"] for r in results) == 3
    assert sum(r["stats"]["lock_waits"] for r in results) >= 1


@pytest.mark.parametrize("damage", ["flip", "truncate", "garbage"])
def test_a_damaged_entry_is_detected_rebuilt_and_replaced(tmp_path, damage):
    run_process(tmp_path)
    (entry,) = list(tmp_path.rglob("*.entry"))
    data = entry.read_bytes()
    if damage == "flip":
        data = data[:-10] + bytes(b ^ 0xFF for b in data[-10:])
    elif damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data = b"not an entry at all"
    entry.write_bytes(data)
    second = run_process(tmp_path)
    assert second["ok"] and second["stats"] == counters(compiles=1, corrupt_entries=1)
    assert "damaged" in second["stderr"] and "rebuilding" in second["stderr"]
    third = run_process(tmp_path)
    assert third["stats"] == counters(disk_hits=1)


def test_an_unusable_directory_warns_once_and_compiles_anyway(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    result = run_process(blocker / "cache")
    assert result["ok"] and result["stats"] == counters(compiles=1)
    assert result["stderr"].count("cannot be used") == 1 and "TRT_MULTIDEV_CACHE_DIR" in result["stderr"]


def test_switched_off_writes_nothing(tmp_path):
    result = run_process(tmp_path, TRT_MULTIDEV_CACHE="0")
    assert result["stats"] == counters(compiles=1)
    assert not list(tmp_path.rglob("*.entry"))


def test_delegates_without_the_protocol_or_a_stable_name_stay_in_memory(tmp_path, monkeypatch):
    monkeypatch.setenv("TRT_MULTIDEV_CACHE_DIR", str(tmp_path))
    model = torch.nn.Linear(4, 4)
    torch.compile(model, backend="trt_multidev", options={"delegate": "_delegates:run_graph"})(torch.randn(2, 4))
    import _delegates

    local = _delegates.Serializing()  # not reachable by name from another process
    torch._dynamo.reset()
    torch.compile(model, backend="trt_multidev", options={"delegate": local})(torch.randn(2, 4))
    assert local.builds == 1
    assert not list(tmp_path.rglob("*.entry"))


def test_eviction_removes_least_recently_used_first(tmp_path):
    store = DiskCache(tmp_path, size_limit=2600)
    ns = store.namespace({"torch": "x"}, "cpu")
    for i, key in enumerate(["a" * 64, "b" * 64, "c" * 64]):
        store.write(ns, key, bytes(1000), {"n": i})
        os.utime(store._path(ns, key), (1000 + i, 1000 + i))
    store.read(ns, "a" * 64)  # a hit makes "a" the most recently used
    removed = store.evict()
    assert [e.key for e in removed] == ["b" * 64]
    assert {e.key for e in store.entries()} == {"a" * 64, "c" * 64}


def test_eviction_skips_an_entry_another_process_holds(tmp_path):
    store = DiskCache(tmp_path, size_limit=0)
    ns = store.namespace({"torch": "x"}, "cpu")
    store.write(ns, "a" * 64, bytes(100), {})
    with store.lock(ns, "a" * 64):
        assert store.evict() == []
    assert len(store.evict()) == 1


def test_reads_check_the_checksum(tmp_path):
    store = DiskCache(tmp_path, size_limit=10**6)
    ns = store.namespace({"torch": "x"}, "cpu")
    before = time.time()
    path = store.write(ns, "d" * 64, b"payload", {"graph": "g"})
    payload, meta = store.read(ns, "d" * 64)
    assert payload == b"payload"
    assert meta.pop("created") >= before - 1  # the write adds the key and when it was made
    assert meta == {"graph": "g", "key": "d" * 64}
    path.write_bytes(path.read_bytes()[:-1] + b"X")
    with pytest.raises(CorruptEntry, match="checksum"):
        store.read(ns, "d" * 64)


def test_eviction_spares_the_entry_just_written_even_when_it_is_the_oldest(tmp_path):
    """After a write the cache is trimmed around the new entry (reuse.py passes it as `keep`)."""
    store = DiskCache(tmp_path, size_limit=1500)
    ns = store.namespace({"torch": "x"}, "cpu")
    paths = [store.write(ns, key, bytes(1000), {}) for key in ("a" * 64, "b" * 64)]
    os.utime(paths[0], (1000, 1000))  # "a" is the least recently used
    removed = store.evict(keep={paths[0]})
    assert [e.key for e in removed] == ["b" * 64]
    assert [e.key for e in store.entries()] == ["a" * 64]


def test_a_short_entry_is_said_to_be_truncated_and_a_failed_write_leaves_no_temporary_file(tmp_path):
    store = DiskCache(tmp_path, size_limit=10**6)
    ns = store.namespace({"torch": "x"}, "cpu")
    path = store.write(ns, "e" * 64, bytes(100), {})
    path.write_bytes(path.read_bytes()[:-10])  # a copy cut short
    with pytest.raises(CorruptEntry, match="truncated: 90 of 100"):
        store.read(ns, "e" * 64)
    with pytest.raises(TypeError):
        store.write(ns, "f" * 64, bytes(10), None)  # fails while writing: the metadata must be a dict
    assert store._path(ns, "f" * 64).parent.is_dir() and not list(tmp_path.rglob("*.tmp"))


def test_namespace_separates_versions_and_gpu_identity(tmp_path):
    store = DiskCache(tmp_path, 1)
    base = store.namespace({"torch": "2.11", "tensorrt": "10.1"}, "sm90-nvidia-h100")
    assert base != store.namespace({"torch": "2.11", "tensorrt": "10.2"}, "sm90-nvidia-h100")
    assert base != store.namespace({"torch": "2.11", "tensorrt": "10.1"}, "sm89-nvidia-l40s")
    assert base == store.namespace({"tensorrt": "10.1", "torch": "2.11"}, "sm90-nvidia-h100")
    assert identity_of("cpu") == "cpu"


def _key(model, x, device, **options):
    torch._dynamo.reset()  # else automatic dynamic shapes kick in after a second batch size
    gm, inputs = capture(model, x)
    settings = resolve_settings({"delegate": "_delegates:serializing", **options}, environ={})
    return disk_key(gm, inputs, torch.device(device), settings, "_delegates:serializing", {"torch": "t"})


def test_disk_key_changes_with_what_changes_the_result(fake_mode):
    net = on_fake_device(torch.nn.Linear(4, 4), "cuda:1", fake_mode)
    base, specific = _key(net, fake(fake_mode, 2, 4, device="cuda:1"), "cuda:1")
    assert not specific
    assert _key(net, fake(fake_mode, 3, 4, device="cuda:1"), "cuda:1")[0] != base  # shape
    half = on_fake_device(torch.nn.Linear(4, 4), "cuda:1", fake_mode, dtype=torch.float16)
    assert _key(half, fake(fake_mode, 2, 4, device="cuda:1", dtype=torch.float16), "cuda:1")[0] != base  # dtype
    assert _key(net, fake(fake_mode, 2, 4, device="cuda:1"), "cuda:1", min_block_size=2)[0] != base  # settings
    # Another GPU of the same model shares the build: the index is not in the key...
    other = on_fake_device(torch.nn.Linear(4, 4), "cuda:0", fake_mode)
    assert _key(other, fake(fake_mode, 2, 4, device="cuda:0"), "cuda:0")[0] == base


def test_a_graph_naming_its_device_is_keyed_by_the_target_not_its_index(fake_mode):
    """GPT-2's position ids (`arange(..., device=cuda:N)`): one entry for every GPU of the same
    model, its build moved to the GPU that loads it (relocated)."""
    def f(x):
        return x + torch.ones(4, device=x.device)  # traced as device(type='cuda', index=N)

    def g(x):
        return x + torch.zeros(4, device=x.device)

    k1, specific = _key(f, fake(fake_mode, 4, device="cuda:1"), "cuda:1")
    k0, _ = _key(f, fake(fake_mode, 4, device="cuda:0"), "cuda:0")
    assert specific and k0 == k1
    assert _key(g, fake(fake_mode, 4, device="cuda:1"), "cuda:1")[0] != k1  # the code still counts


def _placed_on(device: str) -> torch.fx.GraphModule:
    """x + arange(4) + ones(4), the factory calls placed on `device` (as a torch.device and as
    a string), built by hand: tracing would run them, and this machine has no GPU."""
    graph = torch.fx.Graph()
    x = graph.placeholder("x")
    steps = graph.call_function(torch.arange, (4,), {"device": torch.device(device)})
    ones = graph.call_function(torch.ones, (4,), {"device": device})
    graph.output(graph.call_function(torch.add, (graph.call_function(torch.add, (x, steps)), ones)))
    return torch.fx.GraphModule(torch.nn.Module(), graph)


def test_a_build_for_one_gpu_is_moved_to_the_gpu_that_loads_it():
    from trt_multidev_backend.cache import names_device
    from trt_multidev_backend.reuse import relocated

    inner = _placed_on("cuda:0")
    holder = torch.nn.Module()
    holder.piece = inner  # graphs nested in what a delegate returns are moved too
    moved = relocated(holder, torch.device("cuda:0"), torch.device("cuda:1"))
    assert moved is holder
    assert not names_device(inner.code, torch.device("cuda:0"))
    assert inner.code == _placed_on("cuda:1").code  # what placement makes for cuda:1


def test_constants_made_while_loading_move_with_the_graph():
    """Loading a graph module traces its code again: a factory call of constant arguments runs
    then, on the device it names, and becomes a constant that `map_location` never saw. The CPU
    and the meta device stand in for two GPUs; the real serializing test delegate loads."""
    from _delegates import Serializing
    from trt_multidev_backend.cache import Stats
    from trt_multidev_backend.reuse import Reuse

    graph = torch.fx.Graph()
    x = graph.placeholder("x")
    graph.output(graph.call_function(torch.add, (x, graph.call_function(torch.arange, (4,), {"device": "cpu"}))))
    built = torch.fx.GraphModule(torch.nn.Module(), graph)
    delegate = Serializing()
    reuse = Reuse(Stats(), lambda *a, **k: None, lambda *a, **k: None)
    loaded = reuse.load(delegate, delegate.dumps(built), {"device": "cpu", "names_device": True},
                        torch.device("meta"), resolve_settings({}, environ={}))
    out = loaded.callable(torch.zeros(4, device="meta"))
    assert out.device.type == "meta" and "_tensor_constant" in loaded.inner.code  # made while loading, moved



def test_the_tensors_a_moved_build_reads_move_as_what_they_were():
    """A parameter stays a parameter (an op left to PyTorch reads its weight), a buffer a buffer,
    a plain tensor attribute a tensor: on the loading GPU (the CPU and the meta device stand in)."""
    from trt_multidev_backend.reuse import relocated

    root = torch.nn.Module()
    root.inner = torch.nn.Module()  # read as inner.weight: the owner is a submodule
    root.inner.weight = torch.nn.Parameter(torch.ones(4), requires_grad=False)
    root.register_buffer("scale", torch.full((4,), 2.0))
    root.offset = torch.zeros(4)
    graph = torch.fx.Graph()
    x = graph.placeholder("x")
    reads = [graph.get_attr(name) for name in ("inner.weight", "scale", "offset")]
    graph.output(graph.call_function(torch.add, (graph.call_function(torch.mul, (x, reads[0])),
                                                  graph.call_function(torch.mul, (reads[1], reads[2])))))
    gm = torch.fx.GraphModule(root, graph)
    del gm._buffers["offset"]  # GraphModule keeps tensor attributes as buffers: a plain one again
    gm.offset = torch.zeros(4)
    assert relocated(gm, torch.device("cpu"), torch.device("meta")) is gm
    weight = gm.get_submodule("inner").weight
    assert isinstance(weight, torch.nn.Parameter) and not weight.requires_grad
    assert "scale" in gm._buffers and "offset" not in gm._buffers and "offset" not in gm._parameters
    assert {t.device.type for t in (weight, gm.scale, gm.offset)} == {"meta"}
    assert gm(torch.zeros(4, device="meta")).device.type == "meta"

def test_a_build_that_cannot_be_moved_is_not_used_elsewhere():
    from trt_multidev_backend.reuse import relocated

    source, target = torch.device("cuda:0"), torch.device("cuda:1")
    assert relocated(lambda x: x, source, target) is None  # nothing to look into
    gm = _placed_on("cuda:0")
    node = next(n for n in gm.graph.nodes if n.op == "call_function")
    node.kwargs = {**node.kwargs, "note": repr(source)}  # names the device where no op argument does
    gm.recompile()
    assert relocated(gm, source, target) is None


def test_loading_another_gpus_build_moves_it_and_counts_nothing_wrong():
    """Reuse.load: the entry's device differs from the target, so the loaded graph is moved;
    where it cannot be, None (the pipeline then builds for the target)."""
    import copy

    from trt_multidev_backend.cache import Stats
    from trt_multidev_backend.reuse import Reuse

    class Keeping:
        """Stands in for a serializing delegate: its bytes name a kept copy (unpickling a graph
        module traces it again, which would run its CUDA factory calls on this machine)."""

        def __init__(self):
            self.kept = {}

        def dumps(self, compiled):
            self.kept[str(len(self.kept)).encode()] = copy.deepcopy(compiled)
            return str(len(self.kept) - 1).encode()

        def loads(self, blob, *, device, settings):
            return copy.deepcopy(self.kept[blob])

    delegate, settings = Keeping(), resolve_settings({}, environ={})
    reuse = Reuse(Stats(), lambda *a, **k: None, lambda *a, **k: None)
    built_on_first = {"device": "cuda:0", "names_device": True}
    payload = delegate.dumps(_placed_on("cuda:0"))
    loaded = reuse.load(delegate, payload, built_on_first, torch.device("cuda:1"), settings)
    assert loaded.inner.code == _placed_on("cuda:1").code
    same = reuse.load(delegate, payload, built_on_first, torch.device("cuda:0"), settings)
    assert same.inner.code == _placed_on("cuda:0").code
    unmovable = _placed_on("cuda:0")
    call = next(n for n in unmovable.graph.nodes if n.op == "call_function")
    call.kwargs = {**call.kwargs, "note": "device(type='cuda', index=0)"}
    unmovable.recompile()
    assert reuse.load(delegate, delegate.dumps(unmovable), built_on_first, torch.device("cuda:1"), settings) is None
    # The entry cannot even be read where its factory calls' device is missing: built there.
    class Unreadable(Keeping):
        def loads(self, blob, *, device, settings):
            raise RuntimeError("CUDA error: invalid device ordinal")
    assert reuse.load(Unreadable(), payload, built_on_first, torch.device("cuda:1"), settings) is None
    with pytest.raises(RuntimeError, match="invalid device ordinal"):  # the same entry on its own GPU: damage
        reuse.load(Unreadable(), payload, built_on_first, torch.device("cuda:0"), settings)
    # A graph naming no device is loaded anywhere as it is, whatever the delegate returns.
    def opaque(x):
        return x
    anywhere = reuse.load(delegate, delegate.dumps(opaque), {"device": "cuda:0", "names_device": False},
                          torch.device("cuda:1"), settings)
    assert anywhere.inner is opaque


def test_disk_key_follows_constant_content():
    import torch.fx

    def graph_with(value: float):
        g = torch.fx.Graph()
        x = g.placeholder("x")
        g.output((g.call_function(torch.add, (x, g.get_attr("c"))),))
        root = torch.nn.Module()
        root.register_buffer("c", torch.full((4,), value))
        return torch.fx.GraphModule(root, g)

    settings = resolve_settings({}, environ={})
    keys = [disk_key(graph_with(v), [torch.zeros(4)], torch.device("cpu"), settings, "d", {})[0] for v in (1.0, 1.0, 2.0)]
    assert keys[0] == keys[1] != keys[2]


def test_disk_key_follows_a_submodules_state_and_the_versions_of_the_stack():
    """A graph calling a submodule (its weights are not graph inputs) is keyed by their content;
    an entry written under other versions of torch or Torch-TensorRT is never read."""
    import torch.fx

    def graph_with(weight: float):
        g = torch.fx.Graph()
        g.output((g.call_module("fc", (g.placeholder("x"),)),))
        root = torch.nn.Module()
        root.fc = torch.nn.Linear(4, 4)
        torch.nn.init.constant_(root.fc.weight, weight)
        torch.nn.init.zeros_(root.fc.bias)
        return torch.fx.GraphModule(root, g)

    settings = resolve_settings({}, environ={})

    def key(gm, versions):
        return disk_key(gm, [torch.zeros(2, 4)], torch.device("cpu"), settings, "d", versions)[0]

    one = {"torch": "2.13.0", "torch_tensorrt": "2.11.0"}
    keys = [key(graph_with(w), one) for w in (1.0, 1.0, 2.0)]
    assert keys[0] == keys[1] != keys[2]
    assert key(graph_with(1.0), {**one, "torch_tensorrt": "2.12.0"}) != keys[0]


def test_disk_key_is_the_same_in_a_new_process():
    script = (
        "import torch\n"
        "from trt_multidev_backend.cache import disk_key\n"
        "from trt_multidev_backend.settings import resolve_settings\n"
        "gm = torch.fx.symbolic_trace(lambda x: (x.cos() * 3,))\n"
        "s = resolve_settings({'trt': {'torch_executed_ops': {'a', 'b', 'c'}}}, environ={})\n"
        "print(disk_key(gm, [torch.zeros(2, 2)], torch.device('cpu'), s, 'd', {'torch': 't'})[0])\n"
    )
    keys = set()
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        keys.add(subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                                check=True).stdout.strip().splitlines()[-1])
    assert len(keys) == 1


def test_fake_gpu_targets_skip_the_disk(fake_mode, tmp_path, monkeypatch):
    monkeypatch.setenv("TRT_MULTIDEV_CACHE_DIR", str(tmp_path))
    net = on_fake_device(torch.nn.Linear(4, 4), "cuda:1", fake_mode)
    torch.compile(net, backend="trt_multidev", options={"delegate": EngineLikeDelegate()})(
        fake(fake_mode, 2, 4, device="cuda:1"))
    assert tm.stats()["cuda:1"] == counters(compiles=1)
    assert not list(tmp_path.rglob("*.entry"))


def _stored_learned(cache_dir: Path) -> list:
    import io

    store = DiskCache(str(cache_dir), 2**30)
    entries = list(store.entries())
    assert len(entries) == 1
    payload, _ = store.read(entries[0].namespace, entries[0].key)
    return torch.load(io.BytesIO(payload), weights_only=False).learned


def test_what_a_graph_learns_while_running_is_stored_again_at_reset(tmp_path):
    import _delegates

    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU()).eval()
    options = {"delegate": "_delegates:learning", "cache_dir": str(tmp_path)}
    compiled = torch.compile(model, backend="trt_multidev", options=options)
    with torch.no_grad():
        compiled(torch.randn(3, 8))
    assert _stored_learned(tmp_path) == []  # written at the build, before it ran
    torch._dynamo.reset()  # reaches the backend's reset(): the entry is written back
    learned = _stored_learned(tmp_path)
    assert len(learned) == 1 and 3 in learned[0]
    assert tm.backend._reuse.save_learned() == 0  # forgotten after the reset: nothing written twice
    assert _delegates.learning.builds >= 1


LEARNING_SCRIPT = textwrap.dedent("""
    import json, sys, torch, torch.nn as nn
    import trt_multidev_backend as tm
    tm.register()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU()).eval()
    compiled = torch.compile(model, backend="trt_multidev", options={"delegate": "_delegates:learning"})
    with torch.no_grad():
        compiled(torch.randn(int(sys.argv[1]), 8))
    print(json.dumps({"stats": tm.stats().get("cpu")}))
""")


def test_a_process_stores_what_its_graphs_learned_at_exit_for_the_next(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRT_MULTIDEV_")}
    env.update({"PYTHONPATH": TESTS, "TRT_MULTIDEV_CACHE_DIR": str(tmp_path)})
    for batch in ("5", "5"):
        out = subprocess.run([sys.executable, "-c", LEARNING_SCRIPT, batch], env=env, capture_output=True,
                             text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        learned = _stored_learned(tmp_path)  # the build's entry held nothing; the exit wrote this
        assert len(learned) == 1 and 5 in learned[0]
    assert '"disk_hits": 1' in out.stdout  # the second process loaded what the first learned


def test_a_graph_with_host_segments_loads_its_device_segments_from_the_disk(tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="trt_multidev")
    """A buffer updated in place (a static KV cache's kind of graph): the update runs in a host
    segment after the delegate's piece, and that piece is disk-cached like a whole graph, so a new
    process (here: a reset) loads it instead of building it."""
    from _delegates import serializing_drops_updates

    class Counting(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(4, 4)
            self.register_buffer("seen", torch.zeros(1))

        def forward(self, x):
            self.seen.add_(1)
            return self.fc(x) * self.seen

    monkeypatch.setenv("TRT_MULTIDEV_CACHE_DIR", str(tmp_path))
    model, x = Counting().eval(), torch.randn(2, 4)
    options = {"delegate": "_delegates:serializing_drops_updates", "device": "cpu", "min_block_size": 1}
    builds = serializing_drops_updates.builds
    outs, lines = [], []
    with torch.no_grad():
        for _ in range(2):
            torch._dynamo.reset()
            tm.reset()
            caplog.clear()
            outs.append(torch.compile(model, backend="trt_multidev", options=options)(x))
            stats = tm.stats()["cpu"]
            lines += [r.getMessage() for r in caplog.records if " by _delegates:" in r.getMessage()]
    assert serializing_drops_updates.builds == builds + 1  # built once, then loaded
    # The build line says where each segment runs: the update after the engine, in PyTorch.
    assert len(lines) == 2 and "built (segments: submod_0 on cpu (" in lines[0] and "submod_1 in PyTorch (" in lines[0]
    assert "loaded (segments: submod_0 on cpu (" in lines[1] and "built" not in lines[1]
    assert stats == counters(disk_hits=1) and model.seen.item() == 2
    torch.testing.assert_close(outs[1], model.fc(x) * 2)
