"""What tq's transform domain buys in time (#33): each coded Linear's factorized forward,
y = U (C x), against its rebuilt dense weight, per rate and layer shape, on the layer's own
input; and the whole model with each layer on the form timed faster (`tq.choose_forwards`, what
a `precision=tq` trial does) against every layer dense. `python -m vitsweep.bench --only
tq_forward`; accuracy at equal bytes is `--only tq`."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from torch import nn

from vitsweep.bench.common import Section
from vitsweep.bench.tq import CALIB_IMAGES, RATES, code, digits_vit, xray_baseline
from vitsweep.data import load
from vitsweep.measure.speed import thread_scope, time_forward
from vitsweep.precision.tq import choose_forwards
from vitsweep.runctx import RunContext
from vitsweep.spec import DataSpec, MeasureSpec


def run(quick: bool = False) -> list[Section]:
    """On the xray baseline when `make sweep` cached it, else on an untrained digits ViT of
    the same shape (which rows are kept depends on the weights: said in the notes)."""
    xray = None if quick else xray_baseline()
    return [forward_section(xray, quick)]


def forward_section(xray: tuple[nn.Module, Any] | None, quick: bool) -> Section:
    """Per rate and layer shape: rows kept, multiply-adds and the time of the transform-domain
    forward against the dense rebuild on the layer's own input (64 test images, the trial's
    throughput batch), and the model's images/s with each layer on its faster form against all
    dense, both timed by `measure.speed` (post-training codes: retraining changes values, not
    which rows are kept)."""
    base, splits = xray if xray is not None else (digits_vit().eval(), load(DataSpec()))
    timing = MeasureSpec(threads=2, lock=False)
    batch = torch.stack([splits.test[i][0] for i in range(64)])
    calib = [torch.stack([splits.train[i][0] for i in range(CALIB_IMAGES)])]
    shape = tuple(batch.shape[1:])
    rows: list[dict[str, Any]] = []
    whole: dict[float, tuple[float, float, int, int]] = {}
    for rate in (1.0, 2.0) if quick else RATES:
        model = code(base, "tq", rate, calib)
        chosen = choose_forwards(model, batch, timing)
        layers = dict(model.named_modules())
        with thread_scope(timing.threads):
            fast = time_forward(model, RunContext(), shape, 64, timing).rate
            for c in chosen:
                layers[c.name].use_factorized(False)
            dense = time_forward(model, RunContext(), shape, 64, timing).rate
        whole[rate] = (fast, dense, sum(c.factorized for c in chosen), len(chosen))
        by_shape: dict[tuple[int, int], list] = {}
        for c in chosen:
            by_shape.setdefault((c.out_features, c.in_features), []).append(c)
        for (out_f, in_f), cs in sorted(by_shape.items()):
            rows.append({
                "rate": rate,
                "shape (out x in)": f"{out_f} x {in_f}",
                "layers": len(cs),
                "rows kept (median share)": round(float(np.median(
                    [c.kept / min(out_f, in_f) for c in cs])), 3),
                "MACs factorized / dense (median)": round(float(np.median(
                    [c.macs_ratio for c in cs])), 3),
                "dense us (median)": round(1e6 * float(np.median([c.dense_s for c in cs])), 1),
                "factorized us (median)": round(
                    1e6 * float(np.median([c.factorized_s for c in cs])), 1),
                "factorized faster": sum(c.factorized for c in cs),
            })  # fmt: skip
    for rate, (fast, dense, n, total) in whole.items():
        rows.append({
            "rate": rate, "shape (out x in)": "whole model", "layers": total,
            "factorized faster": n, "images/s chosen": round(fast, 1),
            "images/s all dense": round(dense, 1), "chosen / dense": round(fast / dense, 3),
        })  # fmt: skip
    columns = list(dict.fromkeys(k for r in rows for k in r))
    rows = [{c: r.get(c) for c in columns} for r in rows]  # one header for both kinds of row
    name = (
        "xray baseline (ViT e192 d6 h3, 65 tokens)"
        if xray is not None
        else "an untrained digits ViT (e192 d6 h3): the xray baseline is not cached"
    )
    notes = [
        f"{name}, tq transform=auto budget=stored at each rate, calibration on {CALIB_IMAGES} "
        "train images; only Linear layers that kept a transform can factorize (the identity "
        "and the patch-embedding conv run dense)",
        "per layer: `tq.choose_forwards` times both forms on the layer's input in a forward of "
        f"64 test images ({timing.threads} threads, short repeats); the layer keeps the faster",
        "whole model: `measure.speed.time_forward` at batch 64, each layer as chosen vs all "
        "dense, same process, one after the other",
        f"load average at the end {os.getloadavg()[0]:.1f}",
    ]
    return Section("TQ: transform-domain forward vs dense rebuild", rows, [], notes)
