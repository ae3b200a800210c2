"""OpenVINO: the CPU plugin, fp32, bf16/fp16 by its inference-precision hint, or NNCF int8.

The hint is set explicitly for fp32 too: on a CPU with bf16 units OpenVINO's default runs an
fp32 model in bf16, which would label a bf16 measurement fp32.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from vitsweep.spec import ConfigError

HINTS = {"fp32": "f32", "bf16": "bf16", "fp16": "f16", "int8": "f32"}
CAPABILITY = {"bf16": "BF16", "fp16": "FP16"}


def convert(onnx_file: Path):
    """The ONNX export as an OpenVINO model (input batch stays dynamic)."""
    import openvino as ov

    return ov.convert_model(str(onnx_file))


def check_precision(mode: str) -> None:
    """A half precision this CPU's plugin has no units for is refused, not emulated."""
    import openvino as ov

    need = CAPABILITY.get(mode)
    if need is None:
        return
    caps = list(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    if need not in caps:
        raise ConfigError(
            f"precision.mode={mode}: runtime=openvino has no {need} on this CPU "
            f"(OPTIMIZATION_CAPABILITIES: {', '.join(caps)}); valid here: fp32, int8"
        )


def quantize_int8(model, batches: Sequence[np.ndarray]):
    """NNCF post-training int8 of `model` on `batches` (its transformer preset); the model and
    how many FakeQuantize ops it inserted."""
    import logging

    import nncf

    nncf.set_log_level(logging.ERROR)  # its progress bars and notices are not the trial's
    samples = sum(len(b) for b in batches)
    # NNCF draws rich progress bars on stdout whatever the log level: a trial's output is its
    # metrics, so they go nowhere
    with contextlib.redirect_stdout(io.StringIO()):
        quantized = nncf.quantize(
            model,
            nncf.Dataset(list(batches)),
            model_type=nncf.ModelType.TRANSFORMER,
            subset_size=samples,
        )
    fq = sum(op.get_type_name() == "FakeQuantize" for op in quantized.get_ops())
    return quantized, fq


def save(model, xml: Path) -> tuple[Path, Path]:
    """The model as OpenVINO IR (`.xml` graph + `.bin` weights, not compressed further)."""
    import openvino as ov

    ov.save_model(model, str(xml), compress_to_fp16=False)
    return xml, xml.with_suffix(".bin")


def compile_ir(xml: Path, mode: str, threads: int):
    """The IR compiled for the CPU at `threads` threads, one stream (as torch runs)."""
    import openvino as ov

    core = ov.Core()
    return core.compile_model(
        core.read_model(str(xml)),
        "CPU",
        {
            "INFERENCE_PRECISION_HINT": HINTS[mode],
            "INFERENCE_NUM_THREADS": threads,
            "NUM_STREAMS": 1,
        },
    )


def runner(compiled):
    """The compiled model as a function of one numpy batch (logits, copied out)."""
    request = compiled.create_infer_request()

    def run(x: np.ndarray) -> np.ndarray:
        request.infer({0: x}, share_inputs=True)
        return request.get_output_tensor(0).data.copy()

    return run


def _info(op, key: str) -> str:
    info = op.get_rt_info()
    return info[key].astype(str).lower() if key in info else ""


def label(compiled, detail: str) -> str:
    """precision_exec in OpenVINO's words: its version, the precision the plugin infers in, and
    how many of the executed ops run in int8 (the runtime model's `runtimePrecision`)."""
    import openvino as ov

    hint = compiled.get_property("INFERENCE_PRECISION_HINT")
    hint = hint.to_string() if hasattr(hint, "to_string") else str(hint)
    ops = compiled.get_runtime_model().get_ops()
    gemms = [op for op in ops if _info(op, "layerType") in ("fullyconnected", "matmul")]
    int8 = sum(_info(op, "runtimePrecision") in ("i8", "u8") for op in gemms)
    ran = f", {int8} of {len(gemms)} FullyConnected/MatMul in int8" if int8 else ""
    version = ov.get_version().split("-")[0]
    return f"openvino {version} CPU, {detail}, inference precision {hint}{ran}"
