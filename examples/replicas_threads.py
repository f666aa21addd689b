"""One process serving on every GPU: a compiled replica per GPU, one thread per replica.

    python examples/replicas_threads.py

`trt_multidev_backend.replicate` builds the engines once and loads them on the other GPUs of the
same model. Each worker thread owns one replica and takes requests from a shared queue; calls run
on the replica's GPU whatever device the thread has current.
"""

import queue
import threading

import torch

import trt_multidev_backend as tm


def main() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10)).eval()
    example = torch.randn(32, 256)
    devices = None if torch.cuda.is_available() else ["cpu"]  # every visible GPU, or the CPU fallback
    replicas = tm.replicate(model, devices, example_inputs=(example,), options={"min_block_size": 1})
    requests: "queue.Queue[torch.Tensor | None]" = queue.Queue()
    results: list[tuple[str, torch.Tensor]] = []
    lock = threading.Lock()

    def worker(replica: tm.Replica) -> None:
        with torch.no_grad():
            while (batch := requests.get()) is not None:
                out = replica(batch).cpu()
                with lock:
                    results.append((str(replica.device), out))

    threads = [threading.Thread(target=worker, args=(r,)) for r in replicas]
    for t in threads:
        t.start()
    for _ in range(64):
        requests.put(torch.randn(32, 256))
    for _ in threads:
        requests.put(None)
    for t in threads:
        t.join()
    served = {d: sum(1 for dev, _ in results if dev == d) for d in {dev for dev, _ in results}}
    print(f"served {len(results)} batches: {served}; counters {tm.stats()}")


if __name__ == "__main__":
    main()
