"""Module-level delegates, so tests can name them as 'module:function' strings."""

from __future__ import annotations

CALLS: list = []


def run_graph(gm, example_inputs, *, device, settings):
    """A real CPU delegate: records the call and runs the placed graph as it is."""
    CALLS.append((str(device), settings.precision))
    return gm.forward


def broken(gm, example_inputs, *, device, settings):
    raise RuntimeError("engine build exploded")


not_callable = 42


SEEN_SETTINGS: list = []


def record_settings(gm, example_inputs, *, device, settings):
    SEEN_SETTINGS.append(settings)
    return gm.forward


class Serializing:
    """A real serializing CPU delegate: its result is the placed graph module, which it can write
    to bytes and read back (the disk-cache protocol). SERIALIZING_BUILD_SECONDS makes a build slow,
    to line up concurrent processes."""

    def __init__(self) -> None:
        self.builds = 0

    def __call__(self, gm, example_inputs, *, device, settings):
        import os
        import time

        time.sleep(float(os.environ.get("SERIALIZING_BUILD_SECONDS", "0")))
        self.builds += 1
        return gm

    def versions(self):
        import torch

        return {"torch": torch.__version__, "serializing": "1"}

    def dumps(self, compiled) -> bytes:
        import io

        import torch

        buffer = io.BytesIO()
        torch.save(compiled, buffer)
        return buffer.getvalue()

    def loads(self, blob, *, device, settings):
        import io

        import torch

        return torch.load(io.BytesIO(blob), map_location=device, weights_only=False)


serializing = Serializing()


class SerializingDropsUpdates(Serializing):
    """Serializing, and like Torch-TensorRT 2.11 it would not write in-place updates of inputs back
    (trt_multidev does them after it, in a host segment)."""

    keeps_in_place_updates = False


serializing_drops_updates = SerializingDropsUpdates()


SLOW_SECONDS = 1.5


def slow(gm, example_inputs, *, device, settings):
    """A build that lasts SLOW_SECONDS and reports its phases, as a TensorRT build would."""
    import time

    from trt_multidev_backend.progress import current

    progress = current()
    progress.phase("pretending to build")
    steps = 5
    for step in range(steps):
        time.sleep(SLOW_SECONDS / steps)
        progress.advance(step + 1, steps)
    return gm.forward


def slow_broken(gm, example_inputs, *, device, settings):
    import time

    time.sleep(SLOW_SECONDS)
    raise RuntimeError("engine build exploded")


class Learner:
    """What a Learning delegate returns: the graph, plus what it learned while running (the
    leading sizes of each set of arguments it met), as a TensorRT-RTX engine compiles kernels for
    the shapes it meets."""

    def __init__(self, gm) -> None:
        self.gm = gm
        self.learned: list = []
        self.stored = 0  # how much of it the last serialization held

    def __call__(self, *args):
        size = tuple(a.shape[0] for a in args if hasattr(a, "shape") and a.dim() > 0)
        if size not in self.learned:
            self.learned.append(size)
        return self.gm(*args)


class Learning(Serializing):
    """A serializing delegate whose results learn while they run (the disk-cache write-back)."""

    def __call__(self, gm, example_inputs, *, device, settings):
        self.builds += 1
        return Learner(gm)

    def needs_saving(self, compiled) -> bool:
        return len(compiled.learned) > compiled.stored

    def dumps(self, compiled) -> bytes:
        compiled.stored = len(compiled.learned)
        return super().dumps(compiled)


learning = Learning()


class Opaque:
    """Stands in for TensorRT refusing an engine when it creates its execution context: fails
    on any graph holding an op named in `fails_on` without naming it (failing_op says None);
    records the op count of every graph it is given and the ops of those it built."""

    def __init__(self, fails_on: set) -> None:
        self.fails_on = set(fails_on)
        self.calls: list = []
        self.built: list = []

    def __call__(self, gm, example_inputs, *, device, settings):
        names = [getattr(n.target, "__name__", str(n.target)) for n in gm.graph.nodes
                 if n.op in ("call_function", "call_method", "call_module")]
        self.calls.append(len(names))
        if self.fails_on & set(names):
            raise RuntimeError("TensorRT could not create an execution context for '_run_on_acc_2'")
        self.built.append(names)
        return gm

    @staticmethod
    def failing_op(exc):
        return None


class SerializingOpaque(Opaque):
    versions = Serializing.versions
    dumps = Serializing.dumps
    loads = Serializing.loads


opaque_exp = SerializingOpaque({"exp"})


BUILDS: list = []  # ("dynamic" | "static", the tensor example inputs' shapes), per build
RUNS: list = []    # which build ran each call: "dynamic" or "static"
REFUSE_STATIC: list = []  # non-empty: static builds raise (a converter that fails at fixed shapes)
STATIC_BUILD_THREADS: list = []  # the thread each static build ran on
STATIC_BUILD_GRAD: list = []  # whether grad mode was on in each static build


def tagging(gm, example_inputs, *, device, settings):
    """A real CPU delegate that tells its builds apart: "dynamic" when dynamo handed it size
    arguments (SymInts), "static" when they came as plain ints (a build for one call shape)."""
    import threading

    import torch

    tag = "dynamic" if any(isinstance(x, torch.SymInt) for x in example_inputs) else "static"
    BUILDS.append((tag, [tuple(x.shape) for x in example_inputs if isinstance(x, torch.Tensor)]))
    if tag == "static":
        STATIC_BUILD_THREADS.append(threading.current_thread().name)
        STATIC_BUILD_GRAD.append(torch.is_grad_enabled())
        if REFUSE_STATIC:
            raise RuntimeError(REFUSE_STATIC[0])
    forward = gm.forward

    def run(*args):
        RUNS.append(tag)
        return forward(*args)

    return run


class TensorsOnly:
    """Stands in for Torch-TensorRT 2.11 where numbers meet it (H200, sessions 16 and 17): a number
    input that is no tensor's size makes it raise (its remove_sym_nodes reads
    `source.base.local_name` and `source.idx`), it has no converter for `torch.sym_max` nor
    `torch.sym_sum` (H200, session 18), and its
    engines hand numbers back as tensors. Like Torch-TensorRT 2.11 it runs a functional copy of
    the graph: an update of an input in place is not written back (H200: after x.add_(1) in the
    graph, x was unchanged); it runs on copies of the inputs. It gets the graph as trt_multidev's
    Torch-TensorRT delegate hands it over (sizes read from their tensors, unread number arguments
    dropped) and runs it as it is otherwise."""

    keeps_in_place_updates = False

    def __init__(self, prepared: bool = True) -> None:
        self.prepared = prepared  # False: sizes and unread numbers as dynamo gave them
        self.graphs: list = []
        self.inputs: list = []
        self.returned_numbers: list = []  # numbers its engines would hand back as tensors

    def __call__(self, gm, example_inputs, *, device, settings):
        import torch

        from trt_multidev_backend.lowering import sizes_from_their_tensors, unread_numbers_dropped

        if self.prepared:
            sizes_from_their_tensors(gm)
            unread_numbers_dropped(gm, list(example_inputs))
        self.graphs.append(gm)
        self.inputs.append([type(x) for x in example_inputs])
        output = next(n for n in gm.graph.nodes if n.op == "output")
        self.returned_numbers += [n.name for n in output.all_input_nodes
                                  if isinstance(n.meta.get("example_value", n.meta.get("val")), (int, torch.SymInt))]
        for node in gm.graph.nodes:  # placeholders nothing reads: dropped above, when prepared
            source = getattr(node.meta.get("grapharg"), "source", None)
            if node.op == "call_function" and node.target in (torch.sym_max, torch.sym_sum):  # no converters:
                raise RuntimeError(f"stand-in: no converter for {node.target.__name__}")  # its partitioner leaves them out
            if node.op == "placeholder" and node.users and source is not None and node.type is torch.SymInt and not (
                    hasattr(getattr(source, "base", None), "local_name") and isinstance(getattr(source, "idx", None), int)):
                raise AttributeError(f"{type(getattr(source, 'base', None)).__name__!r} object has no attribute 'local_name'")

        def run(*args):
            out = gm(*(a.clone() if isinstance(a, torch.Tensor) else a for a in args))
            as_tensor = [torch.tensor(o) if isinstance(o, (int, float, bool)) else o for o in out]
            return type(out)(as_tensor) if isinstance(out, (tuple, list)) else out

        return run
