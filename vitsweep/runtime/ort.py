"""ONNX Runtime: the CPU execution provider, fp32 or ORT's own static QDQ int8.

int8 mirrors the PT2E path's choices so that runtimes differ by their kernels, not by what was
quantized: only the Linear layers (MatMul/Gemm whose weight is a stored initializer; attention's
activation x activation products stay fp32), per-channel QInt8 weights, QUInt8 activations,
calibrated on the very batches PT2E calibrates on.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from vitsweep.runtime.onnx_export import INPUT

PROVIDER = "CPUExecutionProvider"


def session(file: Path, threads: int):
    """An InferenceSession on `file` at `threads` intra-op threads, one inter-op thread (as
    torch runs), every graph optimization on."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: the provider's notices are not the trial's
    return ort.InferenceSession(str(file), options, providers=[PROVIDER])


def runner(sess):
    """The session as a function of one numpy batch (logits)."""

    def run(x: np.ndarray) -> np.ndarray:
        return sess.run(None, {INPUT: x})[0]

    return run


def linear_nodes(file: Path) -> list[str]:
    """Names of the MatMul/Gemm nodes that are Linear layers: their weight is an initializer."""
    import onnx

    graph = onnx.load(str(file), load_external_data=False).graph
    stored = {i.name for i in graph.initializer}
    return [
        n.name
        for n in graph.node
        if n.op_type in ("MatMul", "Gemm") and len(n.input) > 1 and n.input[1] in stored
    ]


def quantize_int8(fp32: Path, out: Path, batches: Sequence[np.ndarray]) -> str:
    """ORT static QDQ int8 of the Linear nodes of `fp32`, written to `out`; its label."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self._items = iter([{INPUT: b} for b in batches])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._items, None)

    from onnxruntime.quantization.shape_inference import quant_pre_process

    # ORT's advice before quantizing: shapes inferred, graph optimized. Its symbolic shape
    # inference cannot follow ToMe's data-dependent gathers (TypeError in _broadcast_shapes),
    # so ONNX's own shape inference does it.
    pre = out.with_name("model.pre.onnx")
    quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
    nodes = linear_nodes(pre)
    quantize_static(
        str(pre),
        str(out),
        Batches(),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        per_channel=True,
        nodes_to_quantize=nodes,
        calibrate_method=CalibrationMethod.MinMax,
    )
    pre.unlink()
    n = len(batches)
    return (
        f"QDQ int8 (QInt8 per-channel weights, QUInt8 activations, MinMax on {n} calibration "
        f"batch{'es' if n != 1 else ''}), {len(nodes)} Linear MatMul/Gemm, rest fp32"
    )


def label(detail: str) -> str:
    import onnxruntime as ort

    return f"onnxruntime {ort.__version__} {PROVIDER}, {detail}"
