"""The predictors of issue #30: the candidate they both read, the per-block cost table, the
accuracy predictor and its committed data.

Oracles are the code a trial runs, never the predictors again: ToMe's own patched model says
how many tokens each block keeps, timm's model says how many parameters a subnet has and what a
patched model's blocks compute. No timing is asserted (the table's numbers are this machine's).
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from scipy.stats import kendalltau

from vitsweep import config
from vitsweep.models.vit import ViTShape, build_vit
from vitsweep.precision.latency import equal_inputs
from vitsweep.predict.accuracy import (
    DATA_DIR,
    MIN_SAME_PRECISION,
    AccuracyPredictor,
    Evaluations,
    accuracy_records,
)
from vitsweep.predict.candidate import Block, Candidate, candidate
from vitsweep.predict.cost import (
    BlockModel,
    CostPredictor,
    CostTable,
    Geometry,
    block_features,
    committed_entries,
    fit_offset,
    parse_block_key,
)
from vitsweep.search.space import format_override
from vitsweep.spec import ConfigError, MeasureSpec
from vitsweep.tome import apply_tome, block_forward, forward_tokens, token_counts

pytestmark = pytest.mark.usefixtures("one_thread")

QUICK = MeasureSpec(threads=1, warmup=1, min_repeats=2, max_repeats=3, repeat_s=0.005,
                    time_cap_s=0.2)  # fmt: skip


def spec_of(*overrides: str):
    return config.trial_spec(config.compose(["experiment=xray", "tracking=none", *overrides]))


def vit_of(c: Candidate) -> torch.nn.Module:
    shape = ViTShape(c.embed_dim, c.depth, c.heads, c.mlp_ratio, c.head_dim)
    torch.manual_seed(0)
    return build_vit(shape, img_size=32, patch_size=4, in_chans=3, num_classes=7).eval()


@pytest.mark.parametrize(
    ("overrides", "r"),
    [
        (
            (
                "arch.embed_dim=64",
                "arch.depth=3",
                "arch.num_heads=[1,2,4]",
                "arch.mlp_ratio=[2.0,3.0,4.0]",
                "token.r=8",
            ),
            8,
        ),
        (("arch.embed_dim=96", "arch.depth=3", "token.r=[20,20,20]"), [20, 20, 20]),  # capped
        (("arch.embed_dim=48", "arch.depth=4", "token=none", "precision=int8"), 0),
    ],
)
def test_the_candidate_keeps_the_tokens_and_params_the_trial_model_has(overrides, r) -> None:
    c = candidate(spec_of(*overrides))
    model = vit_of(c)
    kept = [b.tokens_in - b.merged for b in c.blocks()]
    assert kept == token_counts(apply_tome(model, r))
    ends = [*model.head.parameters(), *model.patch_embed.parameters()]
    assert c.params() == sum(p.numel() for p in model.parameters()) - sum(p.numel() for p in ends)


def test_the_capped_schedule_is_what_runs() -> None:
    c = candidate(spec_of("arch.embed_dim=96", "arch.depth=3", "token.r=[20,20,20]"))
    assert c.r == (20, 20, 12) and c.tokens == 65


def test_a_vit_built_from_its_dims_is_the_subnet_of_those_dims() -> None:
    """A study's baseline (a fixed ViT) is priced like any candidate: the same blocks as the
    subnet with its dims. A timm model is another network: refused in one line."""
    dims = ("arch.embed_dim=64", "arch.depth=4", "arch.num_heads=2", "arch.mlp_ratio=3.0")
    vit = candidate(spec_of("arch=vit", *dims, "arch.head_dim=32", "token.r=4"))
    assert vit == candidate(spec_of(*dims, "token.r=4"))
    assert candidate(spec_of("arch=vit", *dims)).head_dim == 32  # timm's: embed / heads
    with pytest.raises(ConfigError, match=r"arch.kind='vit'.*valid: supernet, vit"):
        candidate(spec_of("arch=deit_base"))


def test_block_forward_runs_the_blocks_as_the_patched_model() -> None:
    c = candidate(spec_of("arch.embed_dim=64", "arch.depth=4", "token.r=4"))
    model = apply_tome(vit_of(c), 4)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want, want_size = forward_tokens(model, x)
        t = model.norm_pre(model._pos_embed(model.patch_embed(x)))
        size = None
        for blk, b in zip(model.blocks, c.blocks(), strict=True):
            assert t.shape[1] == b.tokens_in and (size is None) == b.first
            t, size = block_forward(blk, t, size, b.merged, 1, True)
    torch.testing.assert_close(model.norm(t), want)
    torch.testing.assert_close(size, want_size)


def test_the_cost_table_times_each_part_once_per_machine_and_keeps_it(tmp_path) -> None:
    geometry = Geometry(img_size=32, patch_size=4, in_chans=3, num_classes=7)
    c = candidate(spec_of("arch.embed_dim=48", "arch.depth=3", "arch.num_heads=[1,1,2]",
                          "arch.mlp_ratio=2.0", "token.r=4", "precision=fp32"))  # fmt: skip
    table = CostTable(tmp_path, QUICK, geometry)
    cost = CostPredictor(table, batch_size=4).predict(c)
    assert cost.throughput > 0 and cost.latency_ms > 0
    # 3 blocks + the fixed parts, at batch 4 and at batch 1
    assert table.measured == len(table.entries) == 2 * (3 + 1)
    assert table.path is not None and table.path.parent == tmp_path / "cost"
    again = CostTable(tmp_path, QUICK, geometry)
    assert CostPredictor(again, batch_size=4).predict(c) == cost and again.measured == 0
    # what decides a block's time is in its key: another r is another entry
    deeper = dataclasses.replace(c, r=(8, 8, 8))
    CostPredictor(again, batch_size=4).predict(deeper)
    assert again.measured == 2 * 3


def test_a_full_cast_is_timed_as_its_own_precision(tmp_path) -> None:
    """xray runs bf16 with a full cast: its parts are timed cast (ToMe's sizes stay float32,
    as in the model) under their own keys, never as autocast's."""
    dims = ("arch.embed_dim=48", "arch.depth=3", "arch.num_heads=1", "arch.mlp_ratio=2.0")
    full = candidate(spec_of(*dims, "token.r=4", "precision=bf16", "precision.cast=full"))
    auto = candidate(spec_of(*dims, "token.r=4", "precision=bf16", "precision.cast=autocast"))
    assert (full.runs_as, auto.runs_as) == ("bf16-full", "bf16")
    assert candidate(spec_of(*dims, "precision=fp32", "precision.cast=full")).runs_as == "fp32"
    table = CostTable(tmp_path, QUICK, Geometry(32, 4, 3, 7))
    CostPredictor(table, batch_size=2).predict(full)
    assert {k.split("|")[1] for k in table.entries} == {"bf16-full"}
    CostPredictor(table, batch_size=2).predict(auto)
    assert {k.split("|")[1] for k in table.entries} == {"bf16-full", "bf16"}


@pytest.mark.slow
def test_int8_parts_are_compiled_programs_and_the_call_is_counted_once(tmp_path) -> None:
    c = candidate(spec_of("arch.embed_dim=48", "arch.depth=3", "arch.num_heads=1",
                          "arch.mlp_ratio=2.0", "token=none", "precision=int8"))  # fmt: skip
    table = CostTable(tmp_path, QUICK, Geometry(32, 4, 3, 7))
    one = CostPredictor(table, batch_size=4)
    step = one.step_s(c, 4)
    # the three blocks are one shape: one entry each for batch 4, plus the fixed parts and
    # the compiled call
    assert set(k.split("|")[0] for k in table.entries) == {"block", "fixed", "call"}
    assert len(table.entries) == 3
    call = table.call_s("int8")
    blocks = [table.block_s(b, "int8", 4) for b in c.blocks()]
    assert call > 0 and step == pytest.approx(table.fixed_s(48, 32, "int8", 4) + sum(blocks))
    assert table.fixed_s(48, 32, "int8", 4) >= call


def test_a_parts_repeats_read_equal_values_from_storage_of_their_own() -> None:
    """What lets inductor build one kernel set for all repeats of a part: no repeat reads a
    view into another's storage (its offset would be baked into its kernels), and all see the
    same values (calibration would bake a scale of their own)."""
    x = torch.randn(1, 17, 8)
    xs = equal_inputs(x, 8)
    assert len(xs) == 8 and all(torch.equal(v, x) for v in xs)
    storages = {v.untyped_storage().data_ptr() for v in xs}
    assert len(storages) == 8 and x.untyped_storage().data_ptr() not in storages


def test_references_are_timed_whole_once_and_calibrate_the_sum_of_parts(tmp_path) -> None:
    """A reference's whole timing (batch 4 and batch 1 from one build) is a table entry, read
    back and not measured again; with one reference the calibrated prediction of it is its own
    whole timing, and every other candidate moves by the same seconds."""
    geometry = Geometry(img_size=32, patch_size=4, in_chans=3, num_classes=7)
    fixed = ("arch.num_heads=2", "arch.mlp_ratio=2.0", "token.r=4", "precision=fp32")
    small, big = (
        candidate(spec_of(f"arch.embed_dim={e}", f"arch.depth={d}", *fixed))
        for e, d in ((48, 3), (128, 6))
    )
    table = CostTable(tmp_path, QUICK, geometry)
    calibrated = CostPredictor(table, batch_size=4, references=[small])
    assert sum(k.startswith("whole|") for k in table.entries) == 2
    plain = CostPredictor(table, batch_size=4)
    for batch in (4, 1):
        assert calibrated.step_s(small, batch) == pytest.approx(table.whole_s(small, batch))
        shift = table.whole_s(small, batch) - plain.step_s(small, batch)
        assert calibrated.step_s(big, batch) == pytest.approx(plain.step_s(big, batch) + shift)
    assert set(calibrated.offsets) == {("fp32", 4), ("fp32", 1)}
    again = CostTable(tmp_path, QUICK, geometry)
    CostPredictor(again, batch_size=4, references=[small])
    assert again.measured == 0


def _blocks(n: int) -> list[Block]:
    """`n` distinct blocks of the xray space's kind (dims, tokens, merges, sizes all vary)."""
    rng = np.random.default_rng(0)
    out: set[Block] = set()
    while len(out) < n:
        tokens = int(rng.integers(20, 66))
        merged = int(rng.choice([0, 0, 2, 4, 8]))
        out.add(Block(int(rng.choice([48, 64, 96])), int(rng.integers(1, 4)), 16,
                      float(rng.choice([2.0, 3.0, 4.0])), tokens, merged,
                      bool(merged == 0 or rng.random() < 0.3)))  # fmt: skip
    return sorted(out, key=repr)


def test_the_block_model_predicts_untimed_blocks_from_the_timed_ones(tmp_path) -> None:
    """Timed blocks come back from the table's keys as they were; with a model set, a block the
    table lacks is predicted (nothing timed) and a timed one still reads its timing."""
    table = CostTable(tmp_path, QUICK, Geometry(32, 4, 3, 7))
    blocks = _blocks(12)
    timed = {b: table.block_s(b, "fp32", 4) for b in blocks[:10]}
    table.entries["fixed|fp32|batch=4|whatever"] = 1.0  # not a block: skipped
    back = table.timed_blocks()
    assert {(b, p, n) for b, p, n, _ in back} == {(b, "fp32", 4) for b in timed}
    assert all(s == timed[b] for b, _, _, s in back)
    for b in blocks:
        assert parse_block_key(table.block_key(b, "int8", 1)) == (b, "int8", 1)
    table.model = BlockModel.fit(back)
    measured = table.measured
    new = [table.block_s(b, "fp32", 4) for b in blocks[10:]]
    assert table.measured == measured and all(s > 0 and np.isfinite(s) for s in new)
    assert table.block_s(blocks[0], "fp32", 4) == timed[blocks[0]]
    table.block_s(blocks[0], "bf16", 4)  # a group the model does not cover is timed
    assert table.measured == measured + 1
    assert not BlockModel.fit(back, min_rows=len(back) + 1).covers("fp32", 4)
    with pytest.raises(ConfigError, match=r"precision=bf16, batch 4: the block model was fitted"):
        table.model.predict(blocks[0], "bf16", 4)


def test_the_block_model_recovers_costs_that_are_sums_of_its_features() -> None:
    """The fit itself: times made as known non-negative weights on the features (per precision
    and batch) are predicted back for blocks it never saw; a group with fewer timings than
    weights is not fitted."""
    rng = np.random.default_rng(1)
    blocks = _blocks(40)
    truth = {("fp32", 4): rng.uniform(0, 1, 8), ("int8", 1): rng.uniform(0, 1, 8)}
    scale = 1 / np.array([block_features(b, 4) for b in blocks]).max(axis=0).clip(min=1)

    def seconds(b: Block, key: tuple[str, int]) -> float:
        return float(block_features(b, key[1]) @ (truth[key] * scale)) * 1e-3

    samples = [(b, *k, seconds(b, k)) for k in truth for b in blocks[:30]]
    samples += [(b, "bf16", 4, 1e-3) for b in blocks[:5]]  # too few for 8 weights
    model = BlockModel.fit(samples)
    assert set(model.coef) == set(truth)
    for key in truth:
        for b in blocks[30:]:
            assert model.predict(b, *key) == pytest.approx(seconds(b, key), rel=1e-6)


def test_the_offset_is_the_median_excess_and_needs_a_timing_per_reference() -> None:
    parts = np.array([1.0, 2.0, 3.0])
    excess = np.array([0.5, 0.2, 9.0])  # an outlier does not pull the median
    assert fit_offset(parts, parts + excess) == pytest.approx(0.5)
    for bad in (([], []), ([1.0], [1.0, 2.0])):
        with pytest.raises(ValueError, match="one whole timing per reference"):
            fit_offset(*bad)


def test_a_damaged_cost_table_is_named_with_what_to_do(tmp_path) -> None:
    table = CostTable(tmp_path, QUICK, Geometry(32, 4, 3, 7))
    assert table.path is not None
    table.path.parent.mkdir(parents=True)
    table.path.write_text("[1, 2")
    with pytest.raises(ValueError, match=r"not a cost table.*delete it"):
        CostTable(tmp_path, QUICK, Geometry(32, 4, 3, 7))


def test_the_cost_table_refuses_a_precision_it_cannot_time(tmp_path) -> None:
    c = candidate(spec_of("arch.embed_dim=48", "arch.depth=3", "precision=tq"))
    with pytest.raises(ConfigError, match="precision=tq: the cost predictor times fp32"):
        CostPredictor(CostTable(None, QUICK, Geometry(32, 4, 3, 7)), 4).predict(c)


def synthetic(n: int, seed: int) -> tuple[list[Candidate], np.ndarray]:
    """Candidates of the xray space with a known accuracy: wider, deeper and less merged is
    better, int8 costs half a point (generated here, not by any of our code)."""
    rng = np.random.default_rng(seed)
    out, acc = [], []
    for _ in range(n):
        depth = int(rng.integers(3, 7))
        heads = tuple(int(h) for h in rng.choice([1, 2, 4], depth))
        mlp = tuple(float(m) for m in rng.choice([2.0, 3.0, 4.0], depth))
        r = int(rng.choice([0, 2, 4, 8]))
        prec = str(rng.choice(["fp32", "bf16", "int8"]))
        e = int(rng.choice([48, 64, 96, 128]))
        out.append(Candidate(e, heads, mlp, 32, (r,) * depth, 65, prec))
        acc.append(0.8 + 0.0004 * e + 0.01 * depth + 0.003 * sum(heads) / depth - 0.003 * r
                   - 0.005 * (prec == "int8") + rng.normal(0, 0.002))  # fmt: skip
    return out, np.array(acc)


@pytest.mark.parametrize("kind", ["gbt", "gp"])
def test_the_accuracy_predictor_ranks_unseen_candidates(kind: str) -> None:
    train, y = synthetic(120, 0)
    test, want = synthetic(60, 1)
    got = AccuracyPredictor(kind=kind).fit(train, y).predict(test)
    assert kendalltau(want, got).statistic > 0.7
    assert np.all((got >= 0) & (got <= 1))


def test_the_accuracy_predictor_refuses_what_it_cannot_fit() -> None:
    cands, y = synthetic(4, 0)
    with pytest.raises(ConfigError, match="4 evaluations; need at least 5"):
        AccuracyPredictor().fit(cands, y)
    with pytest.raises(ConfigError, match="kind='svm': valid: gp, gbt"):
        AccuracyPredictor(kind="svm").fit(*synthetic(10, 0))


def test_the_committed_accuracy_data_names_its_machine_and_matches_its_configs() -> None:
    path = DATA_DIR / "xray_accuracy.json"
    cands, acc, machine = accuracy_records(path)
    assert {"cpu", "threads", "torch"} <= set(machine)
    assert len(cands) >= 30 and np.all((acc > 0) & (acc <= 1))
    records = json.loads(path.read_text())["records"]
    for rec, c in list(zip(records, cands, strict=True))[:3]:
        lines = [format_override(k, v) for k, v in rec["point"].items()]
        assert candidate(spec_of(*lines)) == c
    # distinct configurations: a repeat would count twice in the cross-validation
    assert len({json.dumps(r["point"], sort_keys=True) for r in records}) == len(records)


def test_a_supernet_keeps_its_evaluations_and_predicts_once_it_has_enough(tmp_path) -> None:
    """What `measure.mode=predicted` fits its accuracy predictor on: every subnet evaluated
    once, per setting, and a predictor only from `after` evaluations on, with some at the
    candidate's own precision."""
    cands, y = synthetic(40, 0)
    path = tmp_path / "supernet.accuracy.json"
    kept, other = Evaluations(path, "one"), Evaluations(path, "two")
    for c, a in zip(cands[:9], y[:9], strict=True):
        kept.add(c, a, 500)
    kept.add(cands[0], 0.0, 500)  # evaluated before: its first accuracy stays
    got, acc = kept.records()
    assert got == cands[:9] and np.allclose(acc, y[:9], atol=1e-6)
    assert other.records()[0] == []  # another setting (precision or token options)
    assert kept.predictor(cands[20], after=10, layers=6) is None  # 9 < 10
    assert kept.predictor(cands[20], after=0, layers=6) is None  # 0: always evaluated
    kept.add(cands[9], y[9], 500)
    seen = {c.runs_as for c in cands[:10]}
    for c in cands[10:]:
        fitted = kept.predictor(c, after=10, layers=6)
        mine = sum(x.runs_as == c.runs_as for x in cands[:10])
        assert (fitted is None) == (mine < MIN_SAME_PRECISION), (c.runs_as, seen)
    for c, a in zip(cands[10:30], y[10:30], strict=True):
        kept.add(c, a, 500)
    fitted = kept.predictor(cands[30], after=10, layers=6)
    assert fitted is not None
    assert kendalltau(y[30:], fitted.predict(cands[30:])).statistic > 0.5
    # a candidate evaluated before is looked up as it was; one never evaluated is not
    assert kept.lookup(cands[3]) == (pytest.approx(y[3], abs=1e-6), 500)
    assert kept.lookup(cands[35]) is None and other.lookup(cands[3]) is None
    # weights of their own (their sha256): records of other weights are left out, and the
    # records kept before digests were (none) still count
    mine = Evaluations(path, "one", weights="a" * 64)
    mine.add(cands[35], 0.5, 400)
    assert mine.lookup(cands[35]) == (0.5, 400) and mine.lookup(cands[3]) is not None
    retrained = Evaluations(path, "one", weights="b" * 64)
    assert retrained.lookup(cands[35]) is None and len(retrained.records()[0]) == 30
    path.write_text("{")
    with pytest.raises(ConfigError, match=r"supernet\.accuracy\.json: not a file of subnet "):
        kept.records()


def test_committed_cost_tables_seed_the_machine_they_were_measured_on(tmp_path) -> None:
    """A committed table of this machine (CPU, threads, torch) and protocol seeds a fresh
    per-machine table, so nothing is timed twice; one of another CPU or protocol does not."""
    from dataclasses import asdict

    from vitsweep.measure.host import describe

    here = {"cpu": describe(), "threads": 1, "torch": torch.__version__}
    ship = tmp_path / "ship"
    ship.mkdir()

    def table(name: str, machine: dict, measure: dict, key: str) -> None:
        doc = {"machine": machine, "measure": measure, "entries": {key: 0.001}}
        (ship / f"{name}_cost.json").write_text(json.dumps(doc))

    table("a", here, asdict(QUICK), "block|a")
    table("b", {**here, "cpu": "another CPU"}, asdict(QUICK), "block|b")
    table("c", here, {**asdict(QUICK), "max_cv": 0.5}, "block|c")
    table("d", {**here, "threads": 2}, asdict(QUICK), "block|d")
    (ship / "e_cost.json").write_text("not json")
    entries, files = committed_entries(QUICK, ship)
    assert entries == {"block|a": 0.001} and files == ["a_cost.json"]


def test_one_supernet_keeps_one_set_of_evaluations_across_precisions() -> None:
    """What the candidate carries (precision, cast, r) does not split the supernet's
    evaluations, so the GP learns the precisions' offsets from one set; an option it does not
    carry (here int8's calibration) does."""
    from vitsweep import trial

    kept = {p: trial.evaluations(spec_of(f"precision={p}")) for p in ("fp32", "bf16", "int8")}
    assert all(k is not None for k in kept.values())
    assert len({(k.path, k.setting) for k in kept.values() if k is not None}) == 1
    assert kept["int8"] is not None and kept["int8"].path.name.endswith(".accuracy.json")
    merged = trial.evaluations(spec_of("token.r=8", "precision=bf16", "precision.cast=autocast"))
    assert merged is not None and merged.setting == kept["fp32"].setting  # type: ignore[union-attr]
    other = trial.evaluations(spec_of("precision=int8", "precision.calib_batches=4"))
    assert other is not None and other.setting != kept["int8"].setting
    assert trial.evaluations(spec_of("precision=tq")) is None  # not what the predictor describes
