"""Data-parallel inference with torchrun: every rank compiles on its own GPU, no set_device.

    torchrun --nproc-per-node 2 examples/torchrun_inference.py

The model stays on the CPU and `device="cuda"` means "this rank's GPU": a process launched by
torchrun (LOCAL_RANK set) targets cuda:LOCAL_RANK. Weights are copied to that GPU once; each call
computes there and returns on the CPU, where eager would return. With a shared
TRT_MULTIDEV_CACHE_DIR, the first rank to reach a graph builds it and the others load it.
"""

import os

import torch
import torch.distributed as dist

import trt_multidev_backend as tm


def main() -> None:
    dist.init_process_group("gloo")  # only a barrier crosses ranks here; the data stays on each rank
    rank = dist.get_rank()
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    model = torch.nn.Sequential(
        torch.nn.Linear(512, 1024), torch.nn.GELU(), torch.nn.Linear(1024, 512), torch.nn.LayerNorm(512)
    ).eval()
    fast = torch.compile(model, backend="trt_multidev", options={"device": "cuda"})
    torch.manual_seed(rank)
    batch = torch.randn(64, 512)  # this rank's shard, on the CPU
    with torch.no_grad():
        out = fast(batch)
        error = ((out - model(batch)).norm() / model(batch).norm()).item()
    print(f"rank {rank} (LOCAL_RANK {local_rank}): output on {out.device}, relative error {error:.1e}, "
          f"counters {tm.stats()}", flush=True)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
