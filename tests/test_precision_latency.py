"""Mixed precision under a latency budget: the per-machine layer table, the plan's prediction,
the budget that cannot be met named in one line, and a plan rebuilt from what its trial
recorded.

The table is measured for real once (a tiny ViT: 4 layer shapes x 3 bit-widths, compiled) and
read back; the ILP's obedience is checked on hand-built tables, so that the right plan is known
whatever this machine's speed. No timing is asserted."""

from __future__ import annotations

import copy
import itertools
from pathlib import Path

import numpy as np
import pytest
from timm.models.vision_transformer import VisionTransformer

from tests.conftest import tiny_vit
from vitsweep import config, trial
from vitsweep.measure.compile import compile_program
from vitsweep.precision import anchored_latency, apply_precision, plan_metrics
from vitsweep.precision.latency import LatencyTable
from vitsweep.precision.mixed import LatencyInputs, format_bits, plan_mixed, searched_linears
from vitsweep.precision.pt2e import pt2e_available
from vitsweep.spec import ConfigError, MeasureSpec, PrecisionSpec, TrialSpec

pytestmark = pytest.mark.usefixtures("one_thread")

QUICK = MeasureSpec(threads=1, warmup=1, min_repeats=2, max_repeats=3, repeat_s=0.01,
                    time_cap_s=0.5)  # fmt: skip
SPEC = dict(mode="mixed", hutchinson_samples=2, calib_batches=1)
MEASURED = {**SPEC, "bits": (6, 8), "low_bit_kernel": "int_mm"}


@pytest.fixture(scope="module")
def splits(digits16):
    return digits16


@pytest.fixture(scope="module")
def base() -> VisionTransformer:
    return tiny_vit(depth=1)


@pytest.fixture(scope="module")
def measured(base, splits, tmp_path_factory) -> tuple[Path, dict]:
    """A loose latency budget on the real table: (cache root, the plan as a dict). Two
    bit-widths, so that the suite compiles 8 layer programs and 5 whole ones, not 12 and 5."""
    root = tmp_path_factory.mktemp("latency")
    spec = PrecisionSpec(**MEASURED, budget_ratio=1.0, latency_ratio=1e6)
    model, _ = apply_precision(copy.deepcopy(base), spec, calib=splits.train, timing=QUICK,
                               cache_root=str(root))  # fmt: skip
    return root, model.vitsweep_mixed_plan


@pytest.mark.slow
def test_every_layer_option_is_timed_once_per_machine_and_kept(measured, base, splits) -> None:
    root, plan = measured
    table = LatencyTable(root, QUICK)
    assert table.path is not None and table.path.parent == root / "latency"
    # qkv, proj, fc1, fc2 at 17 rows (16 patches + the class token), each at 6 and 8 bits
    alone = {k: v for k, v in table.entries.items() if not k.startswith("context=")}
    assert len(alone) == 4 * 2 and all(v > 0 for v in alone.values())
    assert all("rows=17" in k for k in alone)
    # and each group switched whole in the program: one correction per group, per layer
    context = sorted(k.rsplit("group=", 1)[1] for k in table.entries if k.startswith("context="))
    assert context == ["attn.proj", "attn.qkv", "mlp.fc1", "mlp.fc2"]
    for layer in plan.layers:
        assert len(layer.latency) == 2 and layer.latency[plan.candidates.index(8)] == 0.0
        group = layer.name.removeprefix("blocks.0.")
        fix = table.entries[next(k for k in table.entries if k.endswith(f"group={group}"))]
        rows = {"attn.qkv": "in=32,out=96", "attn.proj": "in=32,out=32", "mlp.fc1": "in=32,out=128",
                "mlp.fc2": "in=128,out=32"}[group]  # fmt: skip
        t = {b: next(v for k, v in alone.items() if k.startswith(rows) and f",bits={b}," in k)
             for b in (6, 8)}  # fmt: skip
        # its own time alone over 8 bits', + its group's correction
        assert layer.latency[plan.candidates.index(6)] == pytest.approx(t[6] - t[8] + fix)
    predicted = plan.predicted_latency_s
    assert plan.int8_latency_s > 0 and plan.fp32_latency_s > 0 and plan.latency_ratio == 1e6
    assert predicted == pytest.approx(
        plan.int8_latency_s + sum(x.latency[plan.candidates.index(x.bits)] for x in plan.layers)
    )
    stamp = table.path.stat().st_mtime_ns
    again = LatencyTable(root, QUICK)
    assert again.seconds(base.blocks[0].mlp.fc1, 17, 6, "int_mm") == table.entries[next(
        k for k in table.entries if k.startswith("in=32,out=128") and ",bits=6," in k
    )]  # fmt: skip
    assert table.path.stat().st_mtime_ns == stamp  # read back, not measured again
    # a second plan of the same model: the corrections are read back too, nothing is written
    spec = PrecisionSpec(**MEASURED, budget_ratio=1.0, latency_ratio=1e6)
    apply_precision(
        copy.deepcopy(base), spec, calib=splits.train, timing=QUICK, cache_root=str(root)
    )
    assert table.path.stat().st_mtime_ns == stamp


@pytest.mark.skipif(not pt2e_available("cpu"), reason="onednn runs in the x86 PT2E program")
def test_under_onednn_a_layer_below_8_bits_costs_what_8_bits_cost(base, splits, tmp_path) -> None:
    """Its codes run on the 8-bit layer's own compiled GEMM (test_precision_onednn.py reads the
    kernels): nothing is looked up or timed per layer, only the float and all-8-bit programs."""
    spec = PrecisionSpec(**{**MEASURED, "low_bit_kernel": "auto"}, budget_ratio=0.38,
                         latency_ratio=1e6)  # fmt: skip
    model, ctx = apply_precision(copy.deepcopy(base), spec, calib=splits.train, timing=QUICK,
                                 cache_root=str(tmp_path))  # fmt: skip
    plan = model.vitsweep_mixed_plan
    assert plan.low_bit_kernel == "onednn" and min(plan.bits.values()) < 8
    assert all(x.latency == (0.0, 0.0) for x in plan.layers)
    assert plan.predicted_latency_s == plan.int8_latency_s > 0 and plan.fp32_latency_s > 0
    assert not LatencyTable(tmp_path, QUICK).entries
    # the trial times the plan again beside the all-8-bit program its prediction rests on (kept
    # from planning), and re-anchors the prediction there: here the table adds nothing to it
    shape = (3, 16, 16)
    beside = anchored_latency(model, compile_program(model), ctx, shape, QUICK)
    assert beside["side_by_side_latency_ms"] > 0
    assert beside["side_by_side_predicted_ms"] == beside["side_by_side_int8_latency_ms"] > 0
    int8, int8_ctx = apply_precision(copy.deepcopy(base), PrecisionSpec(mode="int8"),
                                     calib=splits.train)  # fmt: skip
    assert anchored_latency(int8, int8, int8_ctx, shape, QUICK) == {}  # nothing was predicted


def hand_built(base: VisionTransformer, saves_s: list[float]) -> LatencyInputs:
    """Layer l at 4 or 6 bits runs `saves_s[l]` faster than at 8 (as a slow int8 kernel
    would); the float model 1.0 s, the all-8-bit program 0.5 s."""
    layers = len(searched_linears(base))
    extra = -np.array(saves_s, dtype=float)[:layers, None] * np.array([[1.0, 1.0, 0.0]])
    return LatencyInputs(extra, fp32_s=1.0, int8_s=0.5)


SAVES = [0.05, 0.1, 0.02, 0.2]  # qkv, proj, fc1, fc2


def test_the_plan_meets_the_latency_budget_on_a_hand_built_table(base, splits) -> None:
    """Bytes allow 8 bits everywhere, the most accurate plan; latency forbids it, so the ILP
    must move layers below 8 bits until they save enough time, at the least sensitivity:
    checked against every one of the 3^4 plans."""
    for ratio, fewest in ((0.5, 0), (0.45, 1), (0.25, 2), (0.16, 3), (0.13, 4)):
        spec = PrecisionSpec(**SPEC, budget_ratio=1.0, latency_ratio=ratio)
        plan = plan_mixed(base, spec, splits.train, backend="pt2e", latency=hand_built(base, SAVES))
        assert plan.predicted_latency_s <= ratio + 1e-12
        assert sum(x.bits < 8 for x in plan.layers) >= fewest
        best = min(
            sum(x.sensitivity[k] for x, k in zip(plan.layers, pick, strict=True))
            for pick in itertools.product(range(3), repeat=len(plan.layers))
            if 0.5 + sum(x.latency[k] for x, k in zip(plan.layers, pick, strict=True))
            <= ratio + 1e-12
        )
        chosen = sum(x.sensitivity[plan.candidates.index(x.bits)] for x in plan.layers)
        assert chosen == pytest.approx(best, rel=1e-9)
        assert plan.latency_ratio == ratio and plan.int8_latency_s == 0.5


def test_a_latency_budget_it_cannot_meet_is_named_in_one_line(base, splits) -> None:
    latency = hand_built(base, SAVES)
    spec = PrecisionSpec(**SPEC, budget_ratio=1.0, latency_ratio=0.1)  # 0.5 - 0.37 at best
    least = r"smallest feasible ratio with bits=\[4, 6, 8\] is 0\.1300"
    with pytest.raises(
        ConfigError, match=r"precision\.latency_ratio=0\.1: infeasible .* " + least
    ) as err:
        plan_mixed(base, spec, splits.train, backend="pt2e", latency=latency)
    assert "\n" not in str(err.value)
    # all 8-bit meets the latency and all 4-bit the bytes, but not both at once
    with pytest.raises(ConfigError, match=r"precision\.budget_ratio=0\.01: infeasible") as err:
        plan_mixed(base, PrecisionSpec(**SPEC, budget_ratio=0.01), splits.train, backend="pt2e")
    smallest = float(str(err.value).rsplit(" ", 1)[-1])
    spec = PrecisionSpec(**SPEC, budget_ratio=smallest + 1e-4, latency_ratio=0.5)
    plan_mixed(base, spec, splits.train, backend="pt2e", latency=hand_built(base, [0.0] * 4))
    with pytest.raises(ConfigError, match=r"each can be met alone, not together"):
        plan_mixed(base, spec, splits.train, backend="pt2e", latency=hand_built(base, [-0.1] * 4))


def test_a_plan_rebuilt_from_its_recorded_bits_is_the_trials_plan(base, splits) -> None:
    """A latency budget's plan rests on timings taken when planning, so confirm and export
    rebuild a mixed trial from the bits it recorded (`mixed_bits` -> `precision.layer_bits`):
    the same layers at the same bits, no ILP and no timing (a latency budget nothing could
    meet does not stop it)."""
    spec = PrecisionSpec(**SPEC, budget_ratio=1.0, latency_ratio=0.25)
    chosen = plan_mixed(base, spec, splits.train, backend="pt2e", latency=hand_built(base, SAVES))
    recorded = format_bits(chosen)
    assert recorded.count(":") == sum(x.bits < 8 for x in chosen.layers) >= 2
    again = PrecisionSpec(**SPEC, budget_ratio=1.0, latency_ratio=1e-6, layer_bits=recorded)
    model, ctx = apply_precision(copy.deepcopy(base), again, calib=splits.train, timing=QUICK)
    assert model.vitsweep_mixed_plan.bits == chosen.bits
    assert plan_metrics(model) == {"mixed_bits": recorded}  # nothing predicted: nothing timed
    assert ctx.precision_exec.startswith("mixed")

    def as_run(metrics: dict) -> TrialSpec:
        return trial.as_ran(config.trial_spec(config.compose(["precision=mixed"])), metrics)

    assert as_run({"mixed_bits": recorded}).precision.layer_bits == recorded
    assert as_run({"mixed_bits": ""}).precision.layer_bits == ""  # every layer at 8 bits
    assert as_run({}).precision.layer_bits is None  # recorded before plans were: planned again


@pytest.mark.parametrize(
    ("bits", "says"),
    [
        ("blocks.0.attn.nope:6", r"'blocks\.0\.attn\.nope' is not a searched layer; valid: "
                                 r"blocks\.0\.attn\.qkv, blocks\.0\.attn\.proj, "),
        ("blocks.0.mlp.fc1:5", r"'blocks\.0\.mlp\.fc1:5': bits must be one of precision\.bits "
                               r"\[4, 6, 8\]"),
        ("blocks.0.mlp.fc1", r"'blocks\.0\.mlp\.fc1': expected name:bits, e\.g\. "
                             r"blocks\.0\.attn\.qkv:6$"),
    ],
)  # fmt: skip
def test_layer_bits_that_name_no_plan_are_refused_in_one_line(base, splits, bits, says) -> None:
    spec = PrecisionSpec(**SPEC, layer_bits=bits)
    with pytest.raises(ConfigError, match=r"^precision\.layer_bits: " + says) as err:
        plan_mixed(base, spec, splits.train, backend="pt2e")
    assert "\n" not in str(err.value)


def test_layer_bits_that_leave_a_layer_at_8_bits_need_8_among_the_candidates(base, splits):
    spec = PrecisionSpec(**SPEC, bits=(4, 6), layer_bits="blocks.0.attn.qkv:6")
    with pytest.raises(ConfigError, match=r"'blocks\.0\.attn\.proj' not named, and 8 is not in"):
        plan_mixed(base, spec, splits.train, backend="pt2e")
    every = ",".join(f"blocks.0.{g}:4" for g in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"))
    plan = plan_mixed(base, PrecisionSpec(**SPEC, bits=(4, 6), layer_bits=every), splits.train,
                      backend="pt2e")  # fmt: skip
    assert set(plan.bits.values()) == {4} and format_bits(plan) == every


def test_a_latency_budget_against_int8_is_priced_in_int8s_time(base, splits) -> None:
    """`precision.latency_reference=int8`: the ratio multiplies the all-8-bit program's time
    (0.5 s here), so 0.8 of it is 0.4 of the float model's (1.0 s), the same plan; 1.0 is "no
    slower than int8", which the all-8-bit plan meets."""
    latency = hand_built(base, SAVES)
    by_int8 = PrecisionSpec(**SPEC, budget_ratio=1.0, latency_ratio=0.8, latency_reference="int8")
    by_fp32 = PrecisionSpec(**SPEC, budget_ratio=1.0, latency_ratio=0.4)
    plan = plan_mixed(base, by_int8, splits.train, backend="pt2e", latency=latency)
    assert plan.bits == plan_mixed(base, by_fp32, splits.train, backend="pt2e",
                                   latency=latency).bits  # fmt: skip
    assert plan.predicted_latency_s <= 0.4 + 1e-12 and plan.latency_reference == "int8"
    assert any(b < 8 for b in plan.bits.values())
    same = PrecisionSpec(**SPEC, budget_ratio=1.0, latency_ratio=1.0, latency_reference="int8")
    as_int8 = plan_mixed(base, same, splits.train, backend="pt2e", latency=latency)
    assert set(as_int8.bits.values()) == {8}
    slower = hand_built(base, [-0.1] * 4)  # every layer below 8 bits costs time
    least = r"smallest feasible ratio with bits=\[4, 6, 8\] is 1\.0000 \(batch-1 int8 500\.000 ms\)"
    with pytest.raises(ConfigError, match=r"latency_ratio=0\.9: .* " + least):
        plan_mixed(base, PrecisionSpec(**SPEC, budget_ratio=1.0, latency_ratio=0.9,
                                       latency_reference="int8"),
                   splits.train, backend="pt2e", latency=slower)  # fmt: skip
