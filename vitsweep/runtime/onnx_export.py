"""One export of a candidate to ONNX, dynamic batch, by torch.onnx's dynamo exporter.

ToMe's matching and merging export as they are (argsort -> TopK, gather, scatter-add ->
ScatterND/ScatterElements), so the file runs the same token schedule the torch model does.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import torch
from torch import nn

INPUT, OUTPUT = "images", "logits"


class ExportFailed(RuntimeError):
    """The candidate cannot be exported: the trial fails with this reason."""


def reason(err: BaseException) -> str:
    """`Type: first line` of an exception from a library with no common error type."""
    first = (str(err).strip().splitlines() or [""])[0][:200]
    return f"{type(err).__name__}: {first}"


def export_onnx(model: nn.Module, example: torch.Tensor, file: Path, opset: int) -> Path:
    """`model` (eval, float, CPU) written to `file` with input `images` (batch dynamic) and
    output `logits`; raises ExportFailed naming the exporter's reason."""
    from torch.export import Dim

    # the exporter's passes log every initializer they fold at INFO, and Hydra's job logging
    # shows INFO: hundreds of lines per trial that say nothing about the candidate
    for name in ("onnx_ir", "onnxscript", "torch.onnx"):
        logging.getLogger(name).setLevel(logging.WARNING)
    model.eval()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the exporter's deprecation and tracer notices
            program = torch.onnx.export(
                model,
                (example,),
                dynamo=True,
                input_names=[INPUT],
                output_names=[OUTPUT],
                dynamic_shapes=({0: Dim("batch")},),
                opset_version=opset,
                verbose=False,
            )
            program.save(str(file))
    except Exception as err:  # torch.export / onnxscript failures have no common type
        raise ExportFailed(f"torch.onnx.export (dynamo) failed: {reason(err)}") from err
    return file
