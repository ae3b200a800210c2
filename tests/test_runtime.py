"""The runtime axis (issue #34): ONNX Runtime and OpenVINO run the candidate torch measured.

A tiny timm ViT with ToMe (r > 0, so the matching and merging are exported too) goes through the
product's own `runtime.deploy`; outputs are compared with torch on the same inputs, int8 with
the fp32 predictions on real images (scikit-learn's digits), and one trial runs end to end
through `trial.run` with `runtime=onnxruntime`.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from tests.conftest import tiny_vit
from vitsweep import runtime
from vitsweep.spec import PrecisionSpec, RuntimeSpec, TokenSpec
from vitsweep.tome import apply_token

RUNTIMES = ["onnxruntime", "openvino"]


def _tome_vit() -> torch.nn.Module:
    return apply_token(tiny_vit(), TokenSpec(mode="tome", r=2))


def _images(dataset, n: int) -> torch.Tensor:
    return torch.stack([dataset[i][0] for i in range(n)])


def max_relative_difference(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out - ref).abs().max() / ref.abs().max())


@pytest.mark.parametrize("name", RUNTIMES)
def test_fp32_matches_torch_with_tome_at_batch_1_and_3_from_one_export(
    name: str, digits16, one_thread
):
    model = _tome_vit()
    deployed, ctx = runtime.deploy(
        copy.deepcopy(model), RuntimeSpec(name=name), PrecisionSpec(), calib=digits16.train,
        threads=1,
    )  # fmt: skip
    assert ctx.precision_exec.startswith(name) and "fp32" in ctx.precision_exec
    assert len([f for f in deployed.deployed.files if f.suffix in (".onnx", ".xml")]) == 1
    x = _images(digits16.test, 3)
    with torch.inference_mode():
        ref = model(x)
        for batch in (1, 3):  # the one file's batch dimension is dynamic
            diff = max_relative_difference(ctx.forward(deployed, x[:batch]), ref[:batch])
            print(f"{name} fp32 batch {batch}: max relative difference {diff:.2e}")
            assert diff <= 1e-4


@pytest.fixture(scope="module")
def fp32_predictions(digits16) -> np.ndarray:
    model = _tome_vit()
    with torch.inference_mode():
        return model(_images(digits16.test, len(digits16.test))).argmax(1).numpy()


@pytest.mark.parametrize("name", RUNTIMES)
def test_int8_by_the_runtimes_own_quantizer_agrees_with_fp32(
    name: str, digits16, fp32_predictions, one_thread
):
    deployed, ctx = runtime.deploy(
        _tome_vit(), RuntimeSpec(name=name), PrecisionSpec(mode="int8"), calib=digits16.train,
        threads=1,
    )  # fmt: skip
    tool = {"onnxruntime": "QDQ int8", "openvino": "NNCF int8"}[name]
    assert ctx.precision_exec.startswith(name) and tool in ctx.precision_exec, ctx.precision_exec
    with torch.inference_mode():
        x = _images(digits16.test, len(digits16.test))
        pred = ctx.forward(deployed, x).argmax(1).numpy()
    agree = float((pred == fp32_predictions).mean())
    print(f"{name} int8: {agree:.3f} of {len(pred)} predictions equal to fp32's")
    assert agree >= 0.9
    assert runtime.stored_bytes(deployed) > 0


def test_a_model_that_cannot_be_exported_fails_with_the_reason(digits16):
    class Untraceable(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.sum() > 0:  # data-dependent control flow: torch.export refuses it
                return x.flatten(1)[:, :10]
            return -x.flatten(1)[:, :10]

    with pytest.raises(runtime.ExportFailed, match=r"torch\.onnx\.export \(dynamo\) failed: "):
        runtime.deploy(
            Untraceable(), RuntimeSpec(name="onnxruntime"), PrecisionSpec(), calib=digits16.train,
            threads=1,
        )  # fmt: skip
