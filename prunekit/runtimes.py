"""Runtimes and timers: where a measured latency is measured, and how.

A *runtime* is what executes the model when its time is taken:

- `eager` (default): PyTorch, inference mode; on CUDA bf16 autocast and channels_last.
- `onnxruntime`: the model exported to ONNX and run by an ONNX Runtime CPU session with the
  process's thread count (needs the `onnx` extra; imported only when asked for). Standalone
  layers for the latency search's lookup table are built directly as one-node ONNX graphs.
- `compile`: `torch.compile` (inductor) of the eager model; standalone layers are timed eagerly
  (compiling every table entry would cost more than the search saves).

Timing goes through a *timer* object (`DeviceTimer`, or any object with `layer_ms(spec)` and
`model_ms(model, example_inputs)`), so tests can pass a deterministic one (`use_timer`).
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
import statistics
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import torch
from torch import nn

from prunekit import inputs
from prunekit.errors import UserError
from prunekit.planner import LayerSpec

#: the runtimes a latency can be measured on
RUNTIMES = ("eager", "onnxruntime", "compile")


def check_runtime(runtime: str | None, device: str | torch.device = "cpu") -> str:
    """Return `runtime` (default "eager") after checking it is known and runs on `device`."""
    runtime = runtime or "eager"
    if runtime not in RUNTIMES:
        raise UserError(f"runtime {runtime!r} is not one of {', '.join(RUNTIMES)}")
    if runtime == "onnxruntime" and torch.device(device).type != "cpu":
        raise UserError("runtime 'onnxruntime' is measured on the CPU here (its CPU execution provider); use --device cpu")
    return runtime


def onnxruntime_module() -> Any:
    """Return the imported `onnxruntime` module, or raise a one-line `UserError` naming the extra."""
    try:
        import onnx  # noqa: F401
        import onnxruntime
    except ImportError as e:
        raise UserError(f"runtime 'onnxruntime' needs the onnx extra ({e.name} is missing): pip install prunekit[onnx]") from None
    return onnxruntime


def onnx_bytes(model: nn.Module, x: Any) -> bytes:
    """Return `model` (eval, CPU) exported to ONNX for inputs shaped like `x` (a tensor or a tuple; fixed shape)."""
    onnxruntime_module()
    model = model.eval()
    x = tuple(x) if isinstance(x, (tuple, list)) else x
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        try:  # the TorchScript exporter is several times faster to export a CNN than torch.export's
            buffer = io.BytesIO()
            torch.onnx.export(model, x if isinstance(x, tuple) else (x,), buffer, dynamo=False, opset_version=17, do_constant_folding=True)
            return buffer.getvalue()
        except Exception:  # noqa: BLE001 - fall back to the exporter torch recommends
            program = torch.onnx.export(model, x if isinstance(x, tuple) else (x,), dynamo=True, opset_version=18, verbose=False, external_data=False)
            return program.model_proto.SerializeToString()


def onnx_session(payload: bytes, *, threads: int | None = None) -> Any:
    """Return an ONNX Runtime CPU session over `payload` with `threads` intra-op threads (default torch's)."""
    ort = onnxruntime_module()
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads or torch.get_num_threads())
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(payload, options, providers=["CPUExecutionProvider"])


def layer_onnx(spec: LayerSpec) -> bytes:
    """Return a one-node ONNX graph (Conv or Gemm/MatMul) with `spec`'s shapes and random weights."""
    onnxruntime_module()
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    if spec.kind == "linear":
        x_shape = [spec.batch_size, *spec.input_size, spec.in_channels]
        w = numpy_helper.from_array(rng.standard_normal((spec.in_channels, spec.out_channels), dtype=np.float32), "w")
        nodes = [helper.make_node("MatMul", ["x", "w"], ["y0" if spec.bias else "y"])]
        inits = [w]
        if spec.bias:
            inits.append(numpy_helper.from_array(np.zeros(spec.out_channels, np.float32), "b"))
            nodes.append(helper.make_node("Add", ["y0", "b"], ["y"]))
    else:
        x_shape = [spec.batch_size, spec.in_channels, *spec.input_size]
        k = list(spec.kernel_size)
        w = rng.standard_normal((spec.out_channels, spec.in_channels // spec.groups, *k), dtype=np.float32)
        inits = [numpy_helper.from_array(w, "w")]
        names = ["x", "w"]
        if spec.bias:
            inits.append(numpy_helper.from_array(np.zeros(spec.out_channels, np.float32), "b"))
            names.append("b")
        pads = list(spec._padding())
        nodes = [helper.make_node("Conv", names, ["y"], kernel_shape=k, strides=list(spec.stride), pads=pads + pads,
                                  dilations=list(spec.dilation), group=spec.groups)]
    graph = helper.make_graph(nodes, "layer", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def forward_fn(model: nn.Module, x: Any, *, runtime: str = "eager", device: str | torch.device = "cpu",
               threads: int | None = None) -> Callable[[], Any]:
    """Return a no-argument callable that runs one forward of (a copy of) `model` on `x` (a tensor or
    a tuple of the model's inputs, `inputs.call`) on `runtime`.

    eager/compile: inference mode, and on CUDA bf16 autocast and channels_last; onnxruntime: a CPU
    session of the exported model (`threads` intra-op threads). The caller's model is not touched.
    """
    runtime = check_runtime(runtime, device)
    dev = torch.device(device)
    if runtime == "onnxruntime":
        x = inputs.to(x, "cpu")
        session = onnx_session(onnx_bytes(copy.deepcopy(model).cpu(), x), threads=threads)
        tensors = list(x) if isinstance(x, (tuple, list)) else [x]
        feed = {arg.name: t.detach().numpy() for arg, t in zip(session.get_inputs(), tensors)}
        return lambda: session.run(None, feed)
    net = copy.deepcopy(model).eval().to(dev)
    x = inputs.to(x, dev)
    cuda = dev.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
        if isinstance(x, torch.Tensor) and x.dim() == 4:
            net = net.to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)
    if runtime == "compile":
        net = torch.compile(net)
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if cuda else contextlib.nullcontext

    def forward() -> Any:
        with torch.inference_mode(), autocast():
            return inputs.call(net, x)

    if runtime == "compile":
        try:
            forward()  # compiles now, so a failure is reported here and not inside a timing
        except Exception as e:  # noqa: BLE001
            raise UserError(f"runtime 'compile' (torch.compile) failed on this model: {type(e).__name__}: {str(e).splitlines()[0][:200]}") from None
    return forward


# --------------------------------------------------------------------------------------------
# timers


class Timer(Protocol):
    """What the latency search needs from a timer: milliseconds per forward of one layer and of a model."""

    batch_size: int

    def layer_ms(self, spec: LayerSpec) -> float: ...

    def model_ms(self, model: nn.Module, example_inputs: Any) -> float: ...


class DeviceTimer:
    """Measures forward time on `device` and `runtime` (eager, onnxruntime, compile; see the module docstring).

    On the CPU a sample is the mean of enough back-to-back calls to last `min_sample_ms`, and the
    result is the *fastest* of `repeats` samples: other processes only ever add time, so the
    minimum is the least noisy estimate of the work itself on a shared machine. On CUDA samples
    are timed with CUDA events and the median is returned. `num_threads` (CPU) defaults to
    torch's current setting; `layer_threads` (CPU) is used for standalone layers (`layer_ms`):
    a lookup table only has to rank layers, and one thread ranks them far more reliably than
    several threads that wait on each other when other processes hold the cores. All results are
    milliseconds per forward of a `batch_size` batch.
    """

    def __init__(
        self,
        *,
        device: str | torch.device = "cpu",
        runtime: str = "eager",
        batch_size: int = 1,
        repeats: int = 5,
        warmup: int = 2,
        num_threads: int | None = None,
        layer_threads: int | None = None,
        min_sample_ms: float = 1.0,
        statistic: str | None = None,
    ) -> None:
        self.device = torch.device(device)
        self.runtime = check_runtime(runtime, self.device)
        self.batch_size = int(batch_size)
        self.repeats = max(1, int(repeats))
        self.warmup = max(1, int(warmup))
        self.num_threads = num_threads
        self.layer_threads = layer_threads
        self.min_sample_ms = float(min_sample_ms)
        self.cuda = self.device.type == "cuda"
        self.statistic = statistic or ("median" if self.cuda else "min")
        if self.statistic not in ("min", "median"):
            raise UserError(f"timer statistic {self.statistic!r} is not one of min, median")
        self._models: dict[tuple[int, tuple[tuple[int, ...], ...]], Callable[[], Any]] = {}
        if self.cuda:
            # as deployment runs: cuDNN picks the fastest kernel per shape (during the warm-up)
            torch.backends.cudnn.benchmark = True

    # ------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _threads(self, threads: int | None) -> Iterator[None]:
        if self.cuda or not threads:
            yield
            return
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            yield
        finally:
            torch.set_num_threads(before)

    def time_call(self, fn: Callable[[], Any], *, threads: int | None = None) -> float:
        """Return the time of one call of `fn` in milliseconds (see the class docstring for the statistic).

        `threads` (CPU) overrides `num_threads` for this measurement.
        """
        with self._threads(threads or self.num_threads):
            for _ in range(self.warmup):
                fn()
            if self.cuda:
                torch.cuda.synchronize(self.device)
                samples = []
                for _ in range(self.repeats):
                    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    start.record()
                    for _ in range(4):
                        fn()
                    end.record()
                    end.synchronize()
                    samples.append(start.elapsed_time(end) / 4)
            else:
                t0 = time.perf_counter()
                fn()
                first_ms = (time.perf_counter() - t0) * 1e3
                number = max(1, min(100, math.ceil(self.min_sample_ms / max(first_ms, 1e-3))))
                samples = []
                for _ in range(self.repeats):
                    t0 = time.perf_counter()
                    for _ in range(number):
                        fn()
                    samples.append((time.perf_counter() - t0) * 1e3 / number)
        return min(samples) if self.statistic == "min" else statistics.median(samples)

    def layer_fn(self, spec: LayerSpec, *, threads: int | None = None) -> Callable[[], Any]:
        """Return a callable running one standalone layer built from `spec` on this timer's runtime."""
        if self.runtime == "onnxruntime":
            session = onnx_session(layer_onnx(spec), threads=threads or self.layer_threads or self.num_threads)
            shape = [spec.batch_size, *spec.input_size, spec.in_channels] if spec.kind == "linear" else \
                [spec.batch_size, spec.in_channels, *spec.input_size]
            feed = {"x": torch.randn(*shape).numpy()}
            return lambda: session.run(None, feed)
        module, x = spec.build()
        return forward_fn(module, x, runtime="eager", device=self.device)

    def layer_ms(self, spec: LayerSpec) -> float:
        """Return the measured time of one standalone layer built from `spec`, in milliseconds."""
        return self.time_call(self.layer_fn(spec), threads=self.layer_threads)

    def model_ms(self, model: nn.Module, example_inputs: Any) -> float:
        """Return the measured forward time of a copy of `model` on a `batch_size` batch (of inputs like
        `example_inputs`, a tensor or a tuple), in milliseconds.

        The prepared runtime (an ONNX Runtime session, a compiled model) is kept per model and
        parameter shapes, so re-timing the same model does not export or compile it again.
        """
        key = (id(model), tuple(tuple(p.shape) for p in model.parameters()))
        fn = self._models.get(key)
        if fn is None:
            x = inputs.like(example_inputs, batch_size=self.batch_size, fill="randn", device="cpu")
            with self._threads(self.num_threads):
                fn = forward_fn(model, x, runtime=self.runtime, device=self.device, threads=self.num_threads)
            if len(self._models) > 8:
                self._models.clear()
            self._models[key] = fn
        return self.time_call(fn)


_TIMER_OVERRIDE: list[Timer] = []


@contextlib.contextmanager
def use_timer(timer: Timer) -> Iterator[Timer]:
    """Within the `with` block, measure with `timer` wherever no timer is passed (tests, custom devices).

    Nothing measured with it is cached.
    """
    _TIMER_OVERRIDE.append(timer)
    try:
        yield timer
    finally:
        _TIMER_OVERRIDE.pop()


def timer_override() -> Timer | None:
    """Return the timer `use_timer` put in force, or None."""
    return _TIMER_OVERRIDE[-1] if _TIMER_OVERRIDE else None


def default_timer(device: str | torch.device, *, batch_size: int | None = None, runtime: str = "eager") -> Timer:
    """Return the timer in force (`use_timer`) or a `DeviceTimer` for `device` and `runtime`.

    The default batch is 1 on the CPU (latency) and 128 on CUDA (throughput, as deployed); on the
    CPU standalone layers are timed on one thread (see `DeviceTimer`).
    """
    if _TIMER_OVERRIDE:
        return _TIMER_OVERRIDE[-1]
    dev = torch.device(device)
    cpu = dev.type == "cpu"
    return DeviceTimer(device=dev, runtime=runtime, batch_size=batch_size or (1 if cpu else 128), layer_threads=1 if cpu else None)


def model_device(model: nn.Module) -> torch.device:
    """Return the device of `model`'s first parameter (CPU for a model without parameters)."""
    for p in model.parameters():
        return p.device
    return torch.device("cpu")
