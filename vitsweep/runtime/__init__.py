"""The runtime axis (issue #34): run a candidate on PyTorch, ONNX Runtime or OpenVINO.

`deploy` is the surgery for the two exported runtimes: the float, token-merged model is exported
once to ONNX (dynamic batch), quantized by the runtime's own tool where the precision asks
(ORT static QDQ, NNCF), and compiled into a session behind a `RuntimeModule`, which every
measurement then runs like any torch model. `runtime=torch` never comes here: precision surgery
(`vitsweep.precision`) and inductor run it as before.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from torch import nn
from torch.utils.data import Dataset

from vitsweep.runctx import RunContext
from vitsweep.runtime import onnx_export, ort, ov
from vitsweep.runtime.module import Deployed, RuntimeModule, file_bytes
from vitsweep.runtime.onnx_export import ExportFailed
from vitsweep.spec import RUNTIME_PRECISIONS, ConfigError, PrecisionSpec, RuntimeSpec

__all__ = [
    "RUNTIMES",
    "Deployed",
    "ExportFailed",
    "RuntimeModule",
    "cost_model",
    "deploy",
    "distributions",
    "file_metrics",
    "is_deployed",
    "load",
    "stored_bytes",
    "weights_bytes",
]

RUNTIMES = tuple(RUNTIME_PRECISIONS)
# The installed packages a station needs besides the model file (their own requirements are
# added by `measure.deploy`): torch's PT2E int8 programs load through torchao's ops.
_PACKAGES = {"torch": ("torch",), "onnxruntime": ("onnxruntime",), "openvino": ("openvino",)}


def distributions(runtime: str, precision_exec: str = "") -> tuple[str, ...]:
    """The distributions `runtime` needs to run a model labelled `precision_exec`."""
    extra = ("torchao",) if runtime == "torch" and "pt2e" in precision_exec else ()
    return _PACKAGES[runtime] + extra


def is_deployed(model: nn.Module) -> bool:
    return isinstance(model, RuntimeModule)


def cost_model(model: nn.Module) -> nn.Module:
    """The torch module whose parameters and FLOPs are counted (a runtime's source model)."""
    return model.source if isinstance(model, RuntimeModule) else model


def stored_bytes(model: RuntimeModule) -> int:
    """The runtime's model files as stored (`model_bytes` of a deployed candidate)."""
    return file_bytes(model.deployed.files)


def weights_bytes(model: RuntimeModule) -> int:
    """The files but OpenVINO's `.xml` graph, whose auto-generated layer names come from a
    process-wide counter (`ShapeOf_6389` in one process, `ShapeOf_29237` in the next): the
    same model's xml differs by some hundred bytes between processes, its `.bin` does not."""
    return file_bytes(tuple(f for f in model.deployed.files if f.suffix != ".xml"))


def file_metrics(model: nn.Module) -> dict[str, int]:
    """What a trial records about a deployed model's files beside `model_bytes`."""
    return {"weights_bytes": weights_bytes(model)} if isinstance(model, RuntimeModule) else {}


def _batches(precision: PrecisionSpec, calib: Dataset, batch_size: int) -> list:
    """numpy batches: the PT2E path's calibration batches (int8), else one example batch."""
    from vitsweep.precision.mixed import calib_batches

    count = precision.calib_batches if precision.mode == "int8" else 1
    return [x.numpy() for x, _ in calib_batches(calib, count, batch_size, "cpu")]


def deploy(
    model: nn.Module,
    runtime: RuntimeSpec,
    precision: PrecisionSpec,
    *,
    calib: Dataset,
    threads: int,
    device: str = "cpu",
) -> tuple[RuntimeModule, RunContext]:
    """`model` (float, ToMe applied) exported, quantized and compiled by `runtime` at
    `precision`; returns the module every measurement runs and its ctx. Raises ExportFailed
    (the trial's fail reason) when the model cannot be exported, ConfigError for a pair the
    runtime or this CPU does not run."""
    from vitsweep.precision import CALIB_BATCH_SIZE

    name = runtime.name
    if name not in ("onnxruntime", "openvino"):
        raise ConfigError(f"runtime.name={name!r}: deploy() takes onnxruntime or openvino")
    if precision.mode not in RUNTIME_PRECISIONS[name]:
        raise ConfigError(
            f"precision.mode={precision.mode}: not run by runtime={name}; valid there: "
            f"{', '.join(RUNTIME_PRECISIONS[name])}"
        )
    if device != "cpu":
        raise ConfigError(f"measure.device={device}: runtime={name} runs on the CPU here")
    if name == "openvino":
        ov.check_precision(precision.mode)
    batches = _batches(precision, calib, CALIB_BATCH_SIZE)
    import torch

    workdir = Path(tempfile.mkdtemp(prefix=f"vitsweep-{name}-"))
    start = time.perf_counter()
    try:
        fp32 = onnx_export.export_onnx(
            model, torch.from_numpy(batches[0]), workdir / "model.onnx", runtime.opset
        )
        if name == "onnxruntime":
            run, files, text = _onnxruntime(fp32, precision.mode, batches, threads)
        else:
            run, files, text = _openvino(fp32, precision.mode, batches, threads)
    except Exception as err:  # the runtimes' converters and quantizers share no error type
        shutil.rmtree(workdir, ignore_errors=True)
        if isinstance(err, ConfigError | ExportFailed):
            raise
        raise ExportFailed(
            f"runtime={name} could not take the model: {onnx_export.reason(err)}"
        ) from err
    seconds = time.perf_counter() - start
    deployed = Deployed(name, files, text, seconds, distributions(name), threads, precision.mode)
    ctx = RunContext(device="cpu", precision_exec=text)
    return RuntimeModule(run, deployed, model, workdir), ctx


def load(deployed: Deployed) -> tuple[RuntimeModule, RunContext]:
    """A session on files written before (an export), opened as `deploy` opened it."""
    if deployed.runtime == "onnxruntime":
        run = ort.runner(ort.session(deployed.files[0], deployed.threads))
    else:
        run = ov.runner(ov.compile_ir(deployed.files[0], deployed.mode, deployed.threads))
    return RuntimeModule(run, deployed, None), RunContext(precision_exec=deployed.precision_exec)


def _onnxruntime(fp32: Path, mode: str, batches: list, threads: int):
    file, detail = fp32, "fp32"
    if mode == "int8":
        quantized = fp32.with_name("model.int8.onnx")
        detail = ort.quantize_int8(fp32, quantized, batches)
        quantized.replace(fp32)  # a station ships the quantized file only, as model.onnx
    sess = ort.session(file, threads)
    return ort.runner(sess), (file,), ort.label(detail)


def _openvino(fp32: Path, mode: str, batches: list, threads: int):
    model = ov.convert(fp32)
    detail = "fp32 IR" if mode != "int8" else ""
    if mode == "int8":
        model, fq = ov.quantize_int8(model, batches)
        n = len(batches)
        detail = (
            f"NNCF int8 PTQ (transformer preset, {fq} FakeQuantize, {n} calibration "
            f"batch{'es' if n != 1 else ''})"
        )
    files = ov.save(model, fp32.with_name("model.xml"))
    fp32.unlink()
    compiled = ov.compile_ir(files[0], mode, threads)
    return ov.runner(compiled), files, ov.label(compiled, detail)
