"""The precision string resolver and the errors a bad or unrunnable precision gives."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vitsweep.precision import apply_precision, resolve_precision
from vitsweep.precision.resolve import _cpu_has, resolve_device
from vitsweep.spec import ConfigError, PrecisionSpec


@pytest.mark.parametrize(
    ("mode", "cast", "amp", "model", "data", "label"),
    [
        ("fp32", "autocast", None, torch.float32, torch.float32, "fp32"),
        ("bf16", "autocast", torch.bfloat16, torch.float32, torch.float32, "bf16 autocast"),
        ("bf16", "full", None, torch.bfloat16, torch.bfloat16, "bf16 full"),
        ("fp16", "autocast", torch.float16, torch.float32, torch.float32, "fp16 autocast"),
        ("fp16", "full", None, torch.float16, torch.float16, "fp16 full"),
        ("int8", "autocast", None, torch.float32, torch.float32, "int8"),
        ("mixed", "full", None, torch.float32, torch.float32, "mixed"),
    ],
)
def test_resolve_maps_each_string(mode, cast, amp, model, data, label):
    r = resolve_precision(mode, cast)
    assert (r.amp_dtype, r.model_dtype, r.data_dtype, r.label) == (amp, model, data, label)


@pytest.mark.parametrize(
    ("mode", "cast", "key"),
    [("fp8", "autocast", "precision.mode"), ("bf16", "half", "precision.cast")],
)
def test_bad_strings_name_the_key(mode, cast, key):
    with pytest.raises(ConfigError, match=key):
        resolve_precision(mode, cast)


def test_fp16_on_cpu_is_refused_or_runs_natively():
    model = nn.Sequential(nn.Linear(8, 4))
    if _cpu_has(torch.float16):
        _, ctx = apply_precision(model, PrecisionSpec(mode="fp16", cast="full"))
        assert ctx.precision_exec == "fp16 full"
        assert model[0].weight.dtype == torch.float16
    else:
        with pytest.raises(ConfigError, match=r"precision.mode='fp16'.*(bf16|fp32)"):
            apply_precision(model, PrecisionSpec(mode="fp16"))
        assert model[0].weight.dtype == torch.float32  # refused before touching the model


def test_device_resolution():
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ConfigError, match=r"measure\.device"):
        resolve_device("tpu")


@pytest.mark.parametrize(
    ("fields", "key"),
    [
        ({"mode": "tq", "rate": 9.0}, "precision.rate"),
        ({"mode": "tq", "finetune_steps": 3}, "precision.finetune_steps"),
        ({"mode": "mixed", "bits": (4, 9)}, "precision.bits"),
        ({"mode": "mixed", "bits": (8, 8)}, "precision.bits"),
        ({"mode": "mixed", "budget_ratio": 0.0}, "precision.budget_ratio"),
        ({"mode": "mixed", "hutchinson_samples": 0}, "precision.hutchinson_samples"),
        ({"mode": "mixed"}, "calib"),
    ],
)
def test_bad_specs_are_one_line_config_errors(fields, key):
    """Whether the spec itself or apply_precision catches it, the user gets one named line."""
    with pytest.raises(ConfigError, match=key) as err:
        apply_precision(nn.Sequential(nn.Linear(8, 4)), PrecisionSpec(**fields))
    assert "\n" not in str(err.value)
