"""Supernet bench: what weight sharing gives in accuracy, on held-out test images.

The default study's own setting (experiment=xray: data, space, training recipe, paths.root, so
the supernet and baseline `make sweep` trained are reused from its cache): for the largest,
middle and smallest subnets of the space, test top-1 with inherited weights against the same
shape trained standalone from scratch with the same recipe, each with its 95% Wilson interval
and the paired difference (exact McNemar) on the same test images. The baseline's test
accuracy and the smallest standalone subnet's show that the task stays a real trade-off.
"""

from __future__ import annotations

import tempfile
import time
from typing import Any

from vitsweep.bench.common import Section, Target, quick_overrides
from vitsweep.models.spaces import middle
from vitsweep.models.vit import ViTShape
from vitsweep.spec import TrialSpec


def _spec(overrides: list[str]) -> TrialSpec:
    from vitsweep import config

    return config.trial_spec(config.compose(overrides))


def _shape_overrides(s: ViTShape) -> list[str]:
    heads = ",".join(str(h) for h in s.num_heads)
    mlp = ",".join(f"{m:g}" for m in s.mlp_ratio)
    return [
        f"arch.embed_dim={s.embed_dim}",
        f"arch.depth={s.depth}",
        f"arch.num_heads=[{heads}]",
        f"arch.mlp_ratio=[{mlp}]",
    ]


def _describe(s: ViTShape) -> str:
    return f"e{s.embed_dim} d{s.depth} h{s.num_heads[0]} r{s.mlp_ratio[0]:g}"


def _test_flags(spec: TrialSpec) -> Any:
    from vitsweep import trial

    built = trial.build(spec)
    return trial.correct_flags(built.model, built.ctx, built.splits.test, spec.measure), built


def _pct(summary: dict[str, Any], key: str) -> str:
    return (
        f"{100 * summary[key]:.1f} [{100 * summary[key + '_lo']:.1f}, "
        f"{100 * summary[key + '_hi']:.1f}]"
    )


def run(quick: bool = False) -> list[Section]:
    from vitsweep.confirm import standalone
    from vitsweep.measure.accuracy import accuracy_summary, paired_difference
    from vitsweep.models import load_supernet
    from vitsweep.models.train import supernet_path

    common = ["token=none", "precision=fp32"]
    with tempfile.TemporaryDirectory(prefix="vitsweep-bench-") as tmp:
        if quick:  # the plumbing on a small slice, in a scratch root: not the calibration
            common += quick_overrides(tmp)
        from vitsweep import config

        cfg = config.compose(common)
        baseline = [f"{k}={v}" for k, v in cfg.hydra.sweeper.baseline.items()]
        base_spec = _spec([*common, *baseline])
        t0 = time.perf_counter()
        base_flags, _ = _test_flags(base_spec)
        base_s = time.perf_counter() - t0
        base_acc = accuracy_summary(base_flags, "test")

        sub = _spec(common)
        space = sub.arch.space
        assert space is not None
        rows: list[dict[str, Any]] = []
        smallest_alone: dict[str, Any] | None = None
        t0 = time.perf_counter()
        probe, built = _test_flags(sub)  # trains (or finds) the supernet
        supernet_s = time.perf_counter() - t0
        net = load_supernet(
            supernet_path(
                space,
                sub.data,
                sub.train,
                sub.root,
                img_size=sub.arch.img_size,
                patch_size=sub.arch.patch_size,
            )
        )
        shapes = (("largest", net.largest), ("middle", middle(space)), ("smallest", net.smallest))
        for name, shape in shapes:
            spec = _spec([*common, *_shape_overrides(shape)])
            inherited, built = _test_flags(spec)
            t0 = time.perf_counter()
            alone, _ = _test_flags(standalone(spec))
            alone_s = time.perf_counter() - t0
            inh, sta = accuracy_summary(inherited, "test"), accuracy_summary(alone, "test")
            gain = paired_difference(inherited, alone)
            if name == "smallest":
                smallest_alone = sta
            rows.append(
                {
                    "subnet": f"{name} ({_describe(shape)})",
                    "params": sum(p.numel() for p in built.model.parameters()),
                    "inherited test top-1 % [95% CI]": _pct(inh, "test"),
                    "standalone test top-1 % [95% CI]": _pct(sta, "test"),
                    "inherited - standalone (pts)": round(100 * gain.diff, 2),
                    "paired 95% CI (pts)": f"[{100 * gain.lo:.2f}, {100 * gain.hi:.2f}]",
                    "standalone training s": round(alone_s, 1),
                }
            )
    n = len(base_flags)
    gains = [r["inherited - standalone (pts)"] for r in rows]
    targets = [
        Target(
            "baseline test top-1 (%)",
            round(100 * base_acc["test"], 2),
            "in [90, 97]",
            0.90 <= base_acc["test"] <= 0.97,
        ),
        Target(
            "baseline - smallest subnet trained standalone (pts)",
            round(100 * (base_acc["test"] - smallest_alone["test"]), 2) if smallest_alone else 0,
            ">= 5",
            smallest_alone is not None and base_acc["test"] - smallest_alone["test"] >= 0.05,
        ),
        Target(
            "inherited - standalone, worst of the 3 subnets (pts)",
            min(gains),
            ">= 0 for each",
            min(gains) >= 0,
        ),
    ]
    t = sub.train
    notes = [
        f"experiment=xray: data {sub.data.name} {sub.data.image_size}px, {len(built.splits.train)}"
        f" train / {len(built.splits.val)} val / {n} test images; space embed "
        f"{space.embed_dim}, depth {space.depth}, heads {space.num_heads} x {space.head_dim}, "
        f"mlp {space.mlp_ratio}",
        f"recipe: batch {t.batch_size}, lr {t.lr}, {t.threads} threads, seed {t.seed}; "
        f"standalone models (and the baseline) {t.epochs} epochs on the labels alone (what a "
        f"user gets without the supernet); the supernet {t.supernet_schedule} epochs, each step "
        f"shared by 2+{t.sandwich_random} subnets (sandwich), distillation {t.distill}",
        f"baseline ({', '.join(baseline)}): test top-1 {_pct(base_acc, 'test')} % "
        f"(trained or cached: {base_s:.0f} s); supernet trained or cached: {supernet_s:.0f} s",
        "intervals: 95% Wilson per accuracy; inherited - standalone: paired on the same test "
        "images, exact McNemar 95% interval",
    ]
    if quick:
        notes.append("quick: 140 train / 350 test images, 1 epoch: plumbing, not calibration")
    del probe
    title = "Supernet: inherited weights vs standalone training (test split)"
    return [Section(title, rows, targets, notes)]


__all__ = ["run"]
