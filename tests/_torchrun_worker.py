"""One rank of the torchrun test: compiles a CPU model through the shared disk cache."""

import json
import os
import time

import torch
import torch.distributed as dist

import trt_multidev_backend as tm

dist.init_process_group("gloo")
rank = dist.get_rank()
time.sleep(0.5 * rank)  # ranks start compiling at different times
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4)).eval()
x = torch.arange(16.0).reshape(2, 8) / 16
with torch.no_grad():
    out = torch.compile(model, backend=tm.backend, options={"delegate": "_delegates:serializing"})(x)
    ok = bool(torch.allclose(out, model(x)))
result = {"rank": rank, "ok": ok, "out": out.tolist(), "stats": tm.stats()["cpu"],
          "local_rank": os.environ.get("LOCAL_RANK")}
with open(os.path.join(os.environ["RESULT_DIR"], f"rank{rank}.json"), "w") as f:
    json.dump(result, f)  # a file per rank: no object collectives (they need numpy)
dist.barrier()  # nobody tears gloo down while a peer still talks to it
dist.destroy_process_group()
