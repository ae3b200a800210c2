"""The search bench on the predictors (issue #30 item 5): its runs never beat the reference
front that includes them, never spend budget on a repeat, and end as the study would when a
sampler only repeats; nothing is timed on this machine.
"""

from __future__ import annotations

import dataclasses

import optuna

from vitsweep.bench.search import (
    PredictedEvaluator,
    benchmark,
    make_bench,
    predicted_front,
    run_sampler,
)

optuna.logging.set_verbosity(optuna.logging.ERROR)


def test_the_predicted_bench_never_beats_its_reference_nor_pays_for_repeats() -> None:
    res = benchmark(
        "xray",
        samplers=("random", "tpe"),
        seeds=2,
        budgets=(5, 10),
        reference=1500,
        predicted=True,
        reference_runs=(("nsga2", 100, 60),),
    )
    assert res.front.evaluations >= 1500
    assert res.evaluator.surrogate.table.measured == 0
    for run in res.runs:
        assert len(run.fractions) == 10
        assert all(0 < f <= 1 + 1e-9 for f in run.fractions), run.sampler
        assert run.fractions == sorted(run.fractions), f"{run.sampler}: hypervolume shrank"
        assert run.distinct == len(run.values) - 1  # every counted trial a new configuration
    assert set(res.table) == {"random", "tpe"}
    # the lead over random is shown on its own, beside the fraction target
    (section,) = res.sections()
    (lead,) = [t for t in section.targets if "minus random's" in t.name]
    diffs = [res.table["tpe"][n]["median"] - res.table["random"][n]["median"] for n in (5, 10)]
    assert lead.value == round(min(diffs), 3)
    assert lead.met == all(d > 0 for d in diffs)
    assert lead.name.startswith("tpe:")


def test_a_sampler_that_only_repeats_ends_its_run_as_the_study_would() -> None:
    """A space of 12 configurations (one architecture x 4 r x 3 precisions): random keeps
    proposing visited ones; they are told, cost no budget, and 3 in a row end the run."""
    bench = make_bench(
        "xray",
        [
            "arch.space.embed_dim=[48]",
            "arch.space.depth=[3]",
            "arch.space.num_heads=[1]",
            "arch.space.mlp_ratio=[2.0]",
            "arch.embed_dim=48",
            "arch.depth=3",
            "arch.num_heads=1",
            "arch.mlp_ratio=2.0",
            "hydra.sweeper.max_repeats=3",
        ],
    )
    # the study's baseline (a ViT of its own) cannot take the narrowed space's overrides
    small = {"arch.embed_dim": 48, "arch.depth": 3, "arch.num_heads": [1, 1, 1]}
    bench = dataclasses.replace(bench, baseline={**small, "precision": "fp32", "token.r": 0})
    ev = PredictedEvaluator(bench)
    run = run_sampler(bench, ev, "random", seed=0, n_trials=40)
    assert run.distinct == len(run.values) - 1 <= 12
    assert run.repeats >= 3
    front = predicted_front(bench, ev, n_random=200, reference_runs=())
    assert len(front.points) <= 12
