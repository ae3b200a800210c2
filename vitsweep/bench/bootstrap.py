"""Bootstrap bench (issue #29): what starting from a pretrained ViT gives over training the
supernet from scratch, on held-out test images and after a sweep.

`python -m vitsweep.bench --only bootstrap` (about 2 h on 2 cores from nothing; every trained
model is cached under paths.root, so a rerun only evaluates).

The default study's data and recipe (experiment=xray). Its trained baseline (embed 192, depth
6, 3 heads of 64: the same cached model as trial 0 and the teacher) stands in for the
pretrained model a user would download. For each N in `EPOCHS` three supernets of `SPACE`
(whose largest member is the baseline's shape):
- *reordered*: the baseline bootstrapped (`arch.pretrained`), heads, MLP units and embedding
  channels in order of importance (`arch.reorder=true`, the default), fine-tuned N epochs;
- *checkpoint order*: the same, units as the checkpoint has them (`arch.reorder=false`);
- *scratch*: the same space trained from scratch for the same N epochs.
All three with the study's recipe: sandwich rule, the baseline as distillation teacher.

Two readings per supernet:
- the smallest, middle and largest subnet's test top-1, with paired differences (exact
  McNemar) on the same test images;
- the front after the same sweep: the study's sampler and seed, `BUDGET` trials, over the
  study's space narrowed by `SWEEP_OVERRIDES` (subnet x ToMe r x fp32/bf16; accuracy against
  throughput). Every point's accuracy is evaluated for real on that supernet's inherited
  weights (the first `VAL_IMAGES` val images, uncompiled, as `measure.mode=predicted` evaluates
  it). Its throughput is priced on the study's committed cost data (`predict.surrogate`): the
  supernets share one space, so cost is the same function of a point for all three, and timing
  it would add only noise; widths above the table's (128) are the block model's extrapolation.
  The front, chosen on val as a sweep chooses it, is then scored on the test split: its
  hypervolume against the baseline's (test accuracy, priced throughput), with a 95% interval
  from resampling the test images (the same resamples for every supernet, so differences are
  paired). One sampler seed: the interval does not hold the sampler's own luck.
"""

from __future__ import annotations

import dataclasses
import functools
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vitsweep.bench.common import Section, quick_overrides, save_figure
from vitsweep.bench.search import (
    Bench,
    Point,
    PredictedEvaluator,
    make_bench,
    objective_values,
    pareto_mask,
    run_sampler,
)
from vitsweep.bench.supernet import _describe, _shape_overrides, _spec, _test_flags
from vitsweep.hypervolume import hypervolume, normalized_losses
from vitsweep.models.spaces import largest, middle, smallest
from vitsweep.spec import SpaceSpec, TrialSpec

EPOCHS = (5, 30)
# The space a timm ViT of embed 192, depth 6, 3 heads of 64, MLP 4 bootstraps into.
SPACE = (
    "arch.space.embed_dim=[96,128,160,192]",
    "arch.space.depth=[3,4,5,6]",
    "arch.space.num_heads=[1,2,3]",
    "arch.space.mlp_ratio=[2.0,3.0,4.0]",
    "arch.space.head_dim=64",
    "arch.head_dim=64",
    "arch.embed_dim=192",
    "arch.num_heads=3",
)
# --quick: a space small enough for a smoke test; the teacher (the pretrained model) is its largest.
QUICK_SPACE = (
    "arch.space.embed_dim=[32,64]",
    "arch.space.depth=[1,2]",
    "arch.space.num_heads=[1,2]",
    "arch.space.mlp_ratio=[2.0,4.0]",
    "arch.space.head_dim=32",
    "arch.head_dim=32",
    "arch.embed_dim=64",
    "arch.depth=2",
    "arch.num_heads=2",
    "arch.mlp_ratio=4.0",
    "train.teacher.embed_dim=64",
    "train.teacher.depth=2",
    "train.teacher.num_heads=2",
)
VARIANTS = ("reordered", "checkpoint order", "scratch")
VAL_IMAGES = 2000  # per sweep point: the first val images (a trial reads 7,350)
BUDGET = 40  # trials per sweep, the baseline's included (bench-search's target budget)
# What the sweeps search and judge: the study's space and sampler, narrowed where a real
# evaluation would cost more than the comparison needs. int8 out: its uncompiled accuracy
# evaluation took 23-46 s a point here (fp32 and bf16: 4-15 s), and it moves accuracy alike on
# every supernet. Accuracy against throughput only: bytes are a function of the architecture
# and precision alone, and without a meter energy is a copy of throughput.
SWEEP_OVERRIDES = (
    "hydra.sweeper.params.precision='choice(fp32,bf16)'",
    "~hydra.sweeper.objectives.energy",
    "~hydra.sweeper.objectives.model_bytes",
)
SWEEP_SEED = 0
RESAMPLES = 1000  # test-image resamples behind each hypervolume interval


def variant_overrides(variant: str, pretrained: Path) -> list[str]:
    if variant == "scratch":
        return []
    return [f"arch.pretrained={pretrained}", f"arch.reorder={str(variant == 'reordered').lower()}"]


@functools.cache  # the baseline's spec is the same in every sweep of one N: judged once
def point_flags(spec: TrialSpec, split: str, images: int | None = None) -> np.ndarray:
    """Per-image correctness of the trial's model on `split` (its first `images` images),
    built and judged as `measure.mode=predicted` judges it: uncompiled, same weights and
    calibration as the trial."""
    from torch.utils.data import Subset

    from vitsweep import precision, trial

    built = trial.build(spec, evaluate_only=True)
    data = getattr(built.splits, split)
    if images is not None and images < len(data):
        data = Subset(data, range(images))
    judged = precision.accuracy_model(built.model, built.model)
    return trial.correct_flags(judged, built.ctx, data, spec.measure)


class RealAccuracy(PredictedEvaluator):
    """The search bench's evaluator on the predictors, with every point's accuracy evaluated
    for real on the bench's supernet (`images` val images); its cost stays priced."""

    def __init__(self, bench: Bench, surrogate: Any, images: int) -> None:
        from vitsweep import config

        super().__init__(bench, surrogate)
        self.images = images
        self.judged, self.t0 = 0, time.perf_counter()
        # the baseline is a plain ViT: the supernet's own arch.* overrides are not its keys
        plain = config.PointSpecs([o for o in bench.overrides if not o.startswith("arch.")])
        self.base_spec = plain.spec(bench.baseline)

    def _judge(self, entry: dict[str, Any], spec: TrialSpec) -> dict[str, Any]:
        if "metrics" in entry:
            entry["metrics"]["accuracy"] = float(point_flags(spec, "val", self.images).mean())
            self.judged += 1
            if self.judged % 10 == 0:
                done = f"{self.judged} points evaluated ({time.perf_counter() - self.t0:.0f} s)"
                print(f"  {done}", flush=True)
        return entry

    def evaluate(self, points: Sequence[Point], by: str = "") -> list[dict[str, Any]]:
        out = super().evaluate(points, by)
        return [self._judge(e, self.specs.spec(e["point"])) for e in out]

    def baseline(self) -> dict[str, Any]:
        from vitsweep.predict.candidate import candidate

        metrics = self.surrogate.baseline_metrics(candidate(self.base_spec))
        entry = {"point": self.bench.baseline, "metrics": metrics, "by": "baseline"}
        return self._judge(entry, self.base_spec)


@dataclass
class Swept:
    """One supernet's sweep: its front (chosen on val) and each member's test flags."""

    epochs: int
    variant: str
    directions: list[str]
    base: tuple[float, ...]  # the baseline's objective values, accuracy on the test split
    base_flags: np.ndarray
    points: list[dict[str, Any]]  # the front's members (their overrides)
    values: list[tuple[float, ...]]  # their objective values, accuracy on the test split
    flags: list[np.ndarray]  # their per-image test correctness
    distinct: int  # configurations the budget bought
    seconds: float

    def hypervolume(self, idx: np.ndarray | None = None) -> float:
        """Test hypervolume against the baseline; `idx`: test images resampled."""
        if idx is None:
            return hypervolume(self.values, self.base, self.directions)
        base = (float(self.base_flags[idx].mean()), *self.base[1:])
        values = [
            (float(f[idx].mean()), *v[1:]) for f, v in zip(self.flags, self.values, strict=True)
        ]
        return hypervolume(values, base, self.directions)


def sweep(
    overrides: Sequence[str], budget: int, surrogate: Any, images: int, epochs: int, variant: str
) -> Swept:
    """The study's sampler over the study's space on one supernet (see the module docstring)."""
    t0 = time.perf_counter()
    bench = make_bench("xray", overrides)
    ev = RealAccuracy(bench, surrogate, images)
    run = run_sampler(bench, ev, bench.sampler.name, SWEEP_SEED, budget)
    directions = list(bench.objectives.values())
    base_val = objective_values(bench, ev.baseline())
    assert base_val is not None
    done = [(e["point"], v) for e in ev.entries() if (v := objective_values(bench, e))]
    mask = pareto_mask(normalized_losses([base_val, *(v for _, v in done)], base_val, directions))
    front = [(p, v) for (p, v), on in zip(done, mask[1:], strict=True) if on]
    base_flags = point_flags(ev.base_spec, "test")
    flags = [point_flags(ev.specs.spec(p), "test") for p, _ in front]
    return Swept(
        epochs=epochs,
        variant=variant,
        directions=directions,
        base=(float(base_flags.mean()), *base_val[1:]),
        base_flags=base_flags,
        points=[p for p, _ in front],
        values=[(float(f.mean()), *v[1:]) for f, (_, v) in zip(flags, front, strict=True)],
        flags=flags,
        distinct=run.distinct,
        seconds=time.perf_counter() - t0,
    )


def _interval(samples: np.ndarray) -> str:
    lo, hi = np.percentile(samples, [2.5, 97.5])
    return f"[{lo:+.3f}, {hi:+.3f}]" if lo < 0 or hi < 0 else f"[{lo:.3f}, {hi:.3f}]"


def _pts(gain: Any) -> str:
    return f"{100 * gain.diff:+.2f} [{100 * gain.lo:+.2f}, {100 * gain.hi:+.2f}]"


def plot(swept: list[Swept], path: Path) -> Path:
    """Per N, each supernet's front on the test split: accuracy against priced throughput."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = sorted({s.epochs for s in swept})
    fig, axes = plt.subplots(1, len(epochs), figsize=(5.2 * len(epochs), 4), squeeze=False)
    for ax, n in zip(axes[0], epochs, strict=True):
        for s in (s for s in swept if s.epochs == n):
            pts = sorted(s.values, key=lambda v: v[1])
            ax.plot([v[1] for v in pts], [100 * v[0] for v in pts], "o-", ms=4, label=s.variant)
        base = next(s.base for s in swept if s.epochs == n)
        ax.plot([base[1]], [100 * base[0]], "k*", ms=10, label="baseline")
        ax.set_xscale("log")
        ax.set_xlabel("throughput, images/s (priced)")
        ax.set_ylabel("test top-1 %")
        ax.set_title(f"fine-tuned / trained {n} epochs", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower left")
    return save_figure(fig, path)


SHAPES = {"smallest": smallest, "middle": middle, "largest": largest}


def subnet_rows(n: int, space: SpaceSpec, flags: dict[str, dict[str, np.ndarray]]) -> list[dict]:
    """Per shape: each supernet's test top-1 and the paired differences."""
    from vitsweep.measure.accuracy import paired_difference

    rows = []
    for name, shape_of in SHAPES.items():
        f = {v: flags[v][name] for v in VARIANTS}
        rows.append(
            {
                "epochs": n,
                "subnet": f"{name} ({_describe(shape_of(space))})",
                **{f"{v} %": round(100 * float(f[v].mean()), 2) for v in VARIANTS},
                "reordered - scratch (pts) [95% CI]": _pts(
                    paired_difference(f["reordered"], f["scratch"])
                ),
                "reordered - checkpoint order (pts) [95% CI]": _pts(
                    paired_difference(f["reordered"], f["checkpoint order"])
                ),
            }
        )
    return rows


def sweep_rows(swept: list[Swept], resamples: int) -> list[dict[str, Any]]:
    """Per supernet: its front's test hypervolume, and its difference to scratch's of the same
    N, each with a 95% interval from the same test-image resamples."""
    n_test = len(swept[0].base_flags)
    idx = np.random.default_rng(0).integers(0, n_test, size=(resamples, n_test))
    hv = {(s.epochs, s.variant): np.array([s.hypervolume(i) for i in idx]) for s in swept}
    point = {(s.epochs, s.variant): s.hypervolume() for s in swept}
    rows = []
    for s in swept:
        key, scratch = (s.epochs, s.variant), (s.epochs, "scratch")
        gain = "-"
        if s.variant != "scratch":
            gain = f"{point[key] - point[scratch]:+.3f} {_interval(hv[key] - hv[scratch])}"
        rows.append(
            {
                "epochs": s.epochs,
                "supernet": s.variant,
                "distinct candidates": s.distinct,
                "front (chosen on val)": len(s.points),
                "best test top-1 %": round(100 * max((v[0] for v in s.values), default=0), 2),
                "test hypervolume [95% CI]": f"{point[key]:.3f} {_interval(hv[key])}",
                "minus scratch's [95% CI]": gain,
                "sweep s": round(s.seconds),
            }
        )
    return rows


def run(quick: bool = False) -> list[Section]:
    from vitsweep import config, trial
    from vitsweep.predict.surrogate import Surrogate

    epochs, resamples, images = EPOCHS, RESAMPLES, VAL_IMAGES
    if quick:
        epochs, resamples, images = (1,), 50, 100
    out = Path("multirun") / "bench" / ("quick" if quick else "")
    with tempfile.TemporaryDirectory(prefix="vitsweep-bench-") as tmp:
        common = ["experiment=xray", *SPACE]
        if quick:  # the plumbing on a small slice and a small space, in a scratch root
            common = ["experiment=xray", *quick_overrides(tmp), *QUICK_SPACE]
        cfg = config.compose(common)
        budget = 4 if quick else BUDGET
        base_overrides = [f"{k}={v}" for k, v in cfg.hydra.sweeper.baseline.items()]
        # the pretrained model: the study's teacher (in xray trial 0's model, the baseline)
        t0 = time.perf_counter()
        spec = _spec(common)
        assert spec.train.teacher is not None
        trained = trial.train(dataclasses.replace(spec, arch=spec.train.teacher))
        assert trained is not None
        pretrained, base_s = trained.resolve(), time.perf_counter() - t0
        # the search bench slices val and test for speed: these supernets keep the study's
        keep = [f"data.val_size={cfg.data.val_size}", f"data.test_size={cfg.data.test_size}"]
        keep += ["measure.threads=2", *SWEEP_OVERRIDES]
        surrogate = Surrogate.load("xray")
        rows: list[dict[str, Any]] = []
        swept: list[Swept] = []
        trained_s: list[str] = []
        for n in epochs:
            flags: dict[str, dict[str, np.ndarray]] = {}
            for variant in VARIANTS:
                over = [*common, f"train.supernet_epochs={n}"]
                over += variant_overrides(variant, pretrained)
                plain = [*over, "token=none", "precision=fp32"]
                t0 = time.perf_counter()
                sub = _spec(plain)
                trial.train(sub)
                trained_s.append(f"{variant} N={n} {time.perf_counter() - t0:.0f} s")
                space = sub.arch.space
                assert space is not None
                flags[variant] = {
                    name: _test_flags(_spec([*plain, *_shape_overrides(shape_of(space))]))[0]
                    for name, shape_of in SHAPES.items()
                }
                print(f"N={n} {variant}: sweeping {budget} trials", flush=True)
                swept.append(sweep([*over, *keep], budget, surrogate, images, n, variant))
            rows += subnet_rows(n, space, flags)
        figure = plot(swept, out / "bootstrap.png")
    t = _spec(common).train
    teacher = t.teacher
    assert teacher is not None
    notes = [
        f"experiment=xray: {len(swept[0].base_flags)} test images; space embed "
        f"{space.embed_dim}, depth {space.depth}, heads {space.num_heads} x {space.head_dim}, "
        f"mlp {space.mlp_ratio}; its largest member has the shape of the pretrained model, the "
        f"study's teacher (embed {teacher.embed_dim}, depth {teacher.depth}, "
        f"{teacher.num_heads} heads), trained {t.epochs} epochs on the labels (or cached: "
        f"{base_s:.0f} s); unlike an ImageNet checkpoint it has seen this train split. The "
        f"baseline the fronts are judged against: {', '.join(base_overrides)}",
        f"supernets: N epochs, batch {t.batch_size}, lr {t.lr}, sandwich 2+{t.sandwich_random}, "
        f"distillation {t.distill} (the pretrained model); reordered: units by their mean "
        "contribution to the residual stream on 256 train images (`arch.reorder`); trained or "
        "cached: " + "; ".join(trained_s),
        "subnets: fp32, no ToMe, test split; differences paired on the same images (exact "
        "McNemar 95% interval)",
        f"sweeps: the study's sampler ({cfg.hydra.sweeper.sampler.name}, seed {SWEEP_SEED}), "
        f"{budget} trials (the baseline's included) over its space (subnet x token.r) x "
        "precision fp32/bf16 (int8's uncompiled evaluation costs 23-46 s a point), objectives "
        f"accuracy and throughput; accuracy evaluated for real on the first {images} val "
        "images, uncompiled; throughput priced on the committed cost data "
        f"({surrogate.describe()}), the same for every "
        "supernet; the front chosen on val, scored on the test split against the baseline's "
        f"test accuracy; intervals from {resamples} resamples of the test images, the same for "
        "every supernet (paired)",
        f"plot: {figure}",
    ]
    if quick:
        notes.append("quick: 140 train / 350 test images, 1 epoch, a small space: plumbing")
    return [
        Section(
            "Bootstrap: a pretrained ViT as the supernet, subnets (test split)", rows, [], notes
        ),
        Section(
            "Bootstrap: the front after the same sweep (test split)",
            sweep_rows(swept, resamples),
            [],
            [],
        ),
    ]


__all__ = ["run"]
