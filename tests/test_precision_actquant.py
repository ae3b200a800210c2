"""Activation quantizers chosen by distribution (#32): each round trip within its bound, the
log quantizer ahead of the uniform one on softmax-shaped tensors at 4 bits, and a mixed plan
at 4-bit activations judged on its simulation, with the simulated sites named."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import tiny_vit
from vitsweep.precision import accuracy_model, apply_precision, model_bytes
from vitsweep.precision.act_quant import ActQuantizer, choose, fit
from vitsweep.spec import ConfigError, PrecisionSpec

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("bits", [4, 6, 8])
@pytest.mark.parametrize("kind", ["uniform", "two_range", "log_sqrt2"])
def test_every_round_trip_is_within_its_bound(kind: str, bits: int) -> None:
    gen = torch.Generator().manual_seed(bits)
    lo, hi = (0.0, 0.7) if kind == "log_sqrt2" else (-0.4, 2.5)
    x = lo + (hi - lo) * torch.rand(20000, generator=gen)
    x = torch.cat([x, torch.tensor([lo, hi, 0.0])])
    q = ActQuantizer(kind, bits, lo, hi)
    err = (q(x) - x).abs()
    assert bool((err <= q.bound(x) * (1 + 1e-5) + 1e-7).all())
    # the bound is tight: some value comes within a quarter of it
    assert float((err / q.bound(x).clamp_min(1e-12)).max()) > 0.25
    levels = q(x).unique().numel()
    assert levels <= 2**bits  # never more codes than the bits hold


def _softmax(n: int, scale: float, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(4, 3, n, n, generator=gen) * scale).softmax(dim=-1)


@pytest.mark.parametrize(("n", "scale"), [(65, 1.0), (65, 3.0), (197, 1.0), (197, 3.0)])
def test_the_log_quantizer_beats_uniform_on_softmax_at_4_bits(n: int, scale: float) -> None:
    """Both with their range searched the same way; judged on the probabilities and on what
    attention computes with them (attn @ v), and picked by `choose`."""
    p = _softmax(n, scale, seed=n)
    v = torch.randn(4, 3, n, 16, generator=torch.Generator().manual_seed(1))
    log_q, log_err = fit("log_sqrt2", 4, p)
    uni_q, uni_err = fit("uniform", 4, p)
    assert log_err < uni_err
    ref = p @ v
    assert (log_q(p) @ v - ref).pow(2).mean() < (uni_q(p) @ v - ref).pow(2).mean()
    assert choose(p, 4).kind == "log_sqrt2"
    assert choose(p, 4, ("uniform",)).kind == "uniform"


def test_a_kind_is_only_fitted_where_the_values_admit_it() -> None:
    gen = torch.Generator().manual_seed(0)
    signed = torch.randn(5000, generator=gen)
    assert choose(signed, 4).kind in ("uniform", "two_range")  # log cannot hold negatives
    gelu = F.gelu(signed * 1.5)
    q = choose(gelu, 6)
    # whichever wins, it is the least squared error among the admitted kinds
    errs = {k: fit(k, 6, gelu)[1] for k in ("uniform", "two_range")}
    assert q.kind == min(errs, key=errs.get)


@pytest.mark.slow
def test_a_plan_at_4_bit_activations_is_judged_on_its_simulation(digits16) -> None:
    base, splits = tiny_vit(), digits16
    spec = PrecisionSpec(mode="mixed", hutchinson_samples=2, calib_batches=1, budget_ratio=1.0,
                         act_bits=4, int8_backend="ao_dynamic")  # fmt: skip
    model, ctx = apply_precision(copy.deepcopy(base), spec, calib=splits.train)
    sim = accuracy_model(model, model)
    assert sim is not model
    # 2 blocks: 4 Linear inputs each, and one softmax each
    assert "simulated for accuracy only" in ctx.precision_exec
    kinds = {m.site: m.quantizer.kind for m in sim.modules() if hasattr(m, "site")}
    assert len(kinds) == 2 * 4 + 2
    # probabilities have no negatives: never two_range there (which kind wins depends on how
    # peaked this model's attention is: 17 keys here)
    assert all(kinds[f"blocks.{b}.attn.softmax"] != "two_range" for b in range(2))
    for kind in set(kinds.values()):
        assert f"{kind} x{sum(k == kind for k in kinds.values())}" in ctx.precision_exec
    # the simulation perturbs the float model's logits, and only a little
    x = torch.stack([splits.test[i][0] for i in range(64)])
    with torch.no_grad():
        sim_out, float_out = sim(x), base(x)
    assert not torch.equal(sim_out, float_out)
    assert float(F.cosine_similarity(sim_out, float_out, dim=-1).mean()) > 0.9
    # the simulation rides on the timed model without joining its state: same bytes as the
    # same plan at 8-bit activations
    eight, _ = apply_precision(copy.deepcopy(base), dataclasses.replace(spec, act_bits=8),
                               calib=splits.train)  # fmt: skip
    assert model.vitsweep_mixed_plan.bits == eight.vitsweep_mixed_plan.bits
    assert model_bytes(model) == model_bytes(eight)
    assert set(model.state_dict()) == set(eight.state_dict())
    # uniform-only: every site uniform
    uniform = dataclasses.replace(spec, act_quantizers="uniform")
    model_u, _ = apply_precision(copy.deepcopy(base), uniform, calib=splits.train)
    sim_u = accuracy_model(model_u, model_u)
    assert {m.quantizer.kind for m in sim_u.modules() if hasattr(m, "site")} == {"uniform"}


def test_bad_activation_settings_are_one_line_errors() -> None:
    with pytest.raises(ConfigError, match=r"^precision\.act_bits=5: valid: 4, 6, 8$"):
        PrecisionSpec(mode="mixed", act_bits=5)
    with pytest.raises(ConfigError, match=r"^precision\.act_quantizers=log: valid: auto, uniform"):
        PrecisionSpec(mode="mixed", act_quantizers="log")
