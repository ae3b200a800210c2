"""The study priced on its predictors (issue #30 item 5): exact storage from the bytes model,
the committed cost table read but never timed on another machine, and prices that move the
way the work does. (The search bench on it: test_bench_search_predicted.py.)
"""

from __future__ import annotations

import dataclasses

import pytest

from vitsweep import config
from vitsweep.predict.candidate import Candidate, candidate
from vitsweep.predict.cost import CostTable, Geometry
from vitsweep.predict.surrogate import METRICS, BytesModel, Surrogate, count_bytes
from vitsweep.spec import ConfigError, MeasureSpec


def test_the_bytes_model_is_exact_on_candidates_it_never_saw(one_thread: None) -> None:
    g = Geometry(img_size=16, patch_size=4, in_chans=1, num_classes=3)
    shapes = [
        (16, (1,), (2.0,)),
        (32, (2,), (4.0,)),
        (16, (2, 1), (4.0, 2.0)),
        (32, (1, 1), (2.0, 2.0)),
        (32, (2, 2, 1), (2.0, 4.0, 4.0)),
        (16, (1, 2, 2), (2.0, 2.0, 4.0)),
        (32, (1, 2), (4.0, 4.0)),
        (16, (2, 2, 2), (4.0, 2.0, 2.0)),
    ]
    held_out = [(32, (2, 1, 2), (2.0, 2.0, 4.0)), (16, (1, 1), (4.0, 4.0))]

    def cands(rows: list, precision: str, r: int = 0) -> list[Candidate]:
        return [Candidate(e, h, m, 8, (r,) * len(h), 17, precision) for e, h, m in rows]

    for precision in ("fp32", "int8"):
        model = BytesModel.fit([(c, count_bytes(c, g)) for c in cands(shapes, precision)], g)
        # merging too: ToMe stores nothing, and int8 programs keep no fp32 weight before a merge
        for c in cands(held_out, precision) + cands(held_out, precision, r=2):
            counted = count_bytes(c, g)
            assert model.predict(c, g) == pytest.approx(counted, rel=1e-3), (precision, c)
    with pytest.raises(ConfigError, match="precision=bf16"):
        model.predict(cands(held_out, "bf16")[0], g)


@pytest.fixture(scope="module")
def surrogate() -> Surrogate:
    return Surrogate.load("xray")


def _xray(point: dict) -> Candidate:
    return candidate(config.PointSpecs(["experiment=xray", "tracking=none"]).spec(point))


POINT = {
    "token.r": 2,
    "precision": "fp32",
    "arch.embed_dim": 64,
    "arch.depth": 4,
    "arch.num_heads": [2, 4, 1, 2],
    "arch.mlp_ratio": [3.0, 4.0, 2.0, 3.0],
}


def test_the_committed_study_is_priced_the_way_the_work_moves(surrogate: Surrogate) -> None:
    c = _xray(POINT)
    deeper = _xray({**POINT, "arch.depth": 5, "arch.num_heads": [2, 4, 1, 2, 4],
                    "arch.mlp_ratio": [3.0, 4.0, 2.0, 3.0, 4.0]})  # fmt: skip
    m, d = surrogate.metrics([c, deeper])
    assert set(m) == set(METRICS)
    assert 0.5 < m["accuracy"] <= 1.0
    # a block more is never free: the parts are timed or priced non-negative
    assert d["throughput"] < m["throughput"] and d["latency_ms"] > m["latency_ms"]
    assert d["model_bytes"] > m["model_bytes"]
    assert m["energy"] == pytest.approx(surrogate.timing.watts / m["throughput"])
    stored = {
        p: surrogate.metrics([dataclasses.replace(c, precision=p, cast=cast)])[0]["model_bytes"]
        for p, cast in (("fp32", "autocast"), ("bf16", "full"), ("int8", "autocast"))
    }
    # xray casts bf16 fully: every weight in two bytes; int8 weights take one (plus scales)
    assert stored["bf16"] == pytest.approx(stored["fp32"] / 2, rel=1e-3)
    assert stored["int8"] < stored["bf16"]


def test_the_baseline_keeps_its_measured_accuracy(surrogate: Surrogate) -> None:
    base = _xray(surrogate.baseline_point)
    assert base.embed_dim == 192 and base.depth == 6 and base.precision == "fp32"
    m = surrogate.baseline_metrics(base)
    assert m["accuracy"] == surrogate.baseline_accuracy
    assert m["throughput"] > 0 and m["model_bytes"] > 0


def test_a_committed_table_is_never_timed_on_this_machine(surrogate: Surrogate) -> None:
    odd = dataclasses.replace(_xray(POINT), embed_dim=80)  # no embed dim of the space
    m = surrogate.metrics([odd])[0]  # its fixed parts on the line through the timed widths
    assert m["throughput"] > 0
    fp16 = dataclasses.replace(_xray(POINT), precision="fp16")  # fp16: no fixed part timed
    with pytest.raises(ConfigError, match=r"xray_cost\.json: no entry 'fixed\|fp16"):
        surrogate.metrics([fp16])
    assert surrogate.table.measured == 0


def test_a_committed_table_prices_an_untimed_width_on_the_line_of_its_widths() -> None:
    """The bootstrap bench's space (#29) reaches widths the xray table never timed: patch
    embedding, norm and head are linear in the width, so a line through the timed widths
    prices them, and never below the cheapest timed part (timings are noisy)."""
    g = Geometry(img_size=16, patch_size=4, in_chans=1, num_classes=3)
    table = CostTable(None, MeasureSpec(), g)
    table.entries = {table._fixed_key(e, "fp32", 64): 1e-3 + 2e-5 * e for e in (32, 64, 96)}
    frozen = CostTable.committed(table.entries, "made.json", MeasureSpec(), g)
    for e in (48, 128, 192):
        assert frozen.fixed_s(e, 8, "fp32", 64) == pytest.approx(1e-3 + 2e-5 * e)
    falling = {table._fixed_key(e, "fp32", 64): 5e-3 - 2e-5 * e for e in (32, 64)}
    cheapest = 5e-3 - 2e-5 * 64
    assert CostTable.committed(falling, "made.json", MeasureSpec(), g).fixed_s(
        192, 8, "fp32", 64
    ) == pytest.approx(cheapest)
    one = CostTable.committed(dict(list(table.entries.items())[:1]), "made.json", MeasureSpec(), g)
    with pytest.raises(ConfigError, match=r"made\.json: no entry 'fixed\|fp32\|batch=64\|embed=48"):
        one.fixed_s(48, 8, "fp32", 64)
    assert frozen.measured == one.measured == 0
