"""Every config option composes; malformed input fails in one line naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import run_cli
from vitsweep import app
from vitsweep.search.space import parse_space

GROUPS = ["data", "arch", "token", "precision", "measure", "train", "tracking", "experiment"]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (app.CONF_DIR / group).glob("*.yaml"))


@pytest.mark.parametrize("group", GROUPS)
def test_every_option_composes_to_a_spec(group: str) -> None:
    assert options(group), f"conf/{group} has no options"
    for option in options(group):
        extra = ["data.root=/tmp"] if option == "folder" else []
        cfg = app.compose([f"{group}={option}", *extra])
        spec = app.trial_spec(cfg)
        ctx = app.sweep_context(cfg, cfg.hydra.sweeper)
        assert spec.root == "multirun"
        assert ctx.sweeper.n_trials >= 1
        if group in ("data", "token", "precision"):
            assert getattr(spec, group).__class__.__name__.lower().startswith(group)


def test_experiment_sets_the_study_name_and_space() -> None:
    cfg = app.compose(["experiment=smoke"])
    ctx = app.sweep_context(cfg, cfg.hydra.sweeper)
    assert ctx.sweeper.study_name == "smoke"
    assert set(ctx.space.distributions) >= {"arch.embed_dim", "arch.depth"}


BAD = {
    "token.rr=3": "token.rr: unknown key",
    "precision=fp64": "precision=fp64: no such option; valid: bf16, fp16, fp32, int8, mixed",
    "token.r=abc": "token.r='abc': expected an integer or a list of integers",
    "measure.energy=foo": "measure.energy='foo': valid: auto, nvml, rapl, estimate",
    "hydra.sweeper.sampler.name=cma": "valid: tpe, nsga2, random, gp, grid",
    "train.epochs=1.5": "train.epochs=1.5",
    "arch.num_heads=[3,x]": "arch.num_heads",
    "experiment=nope": "experiment=nope: no such option",
    "data.image_size=big": "data.image_size=big",
    "hydra.sweeper.n_trials=0": "hydra.sweeper.n_trials=0: must be >= 1",
    "hydra.sweeper.objectives.accuracy=max": "valid: maximize, minimize",
    "+hydra.sweeper.objectives.speed=maximize": "hydra.sweeper.objectives.speed: not a metric",
    "+hydra.sweeper.params.x=choice(0)": "Hydra cannot sweep hydra.* keys",
    "hydra.sweeper.objectives.fps=maximize": "to add one: +hydra.sweeper.objectives.fps",
    "foo=1": "foo",
    "token.r=choice(0,4)": "a sweep needs -m",
    "measure.batch_size=0": "measure.batch_size=0: must be >= 1",
    "arch.patch_size=5": "arch.patch_size=5: must divide arch.img_size=32",
    "hydra.sweeper.max_failure_rate=2": "hydra.sweeper.max_failure_rate=2.0: must be in [0, 1]",
    "hydra.sweeper.params={token.r:'choice(0,'}": "hydra.sweeper.params.token.r",
}


@pytest.mark.parametrize("override", sorted(BAD))
def test_malformed_override_is_one_line(override: str, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        app.check([override])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("vitsweep: error: ")
    assert BAD[override] in err, err


def test_cli_reports_bad_override_in_one_line_and_writes_nothing(workdir: Path) -> None:
    proc = run_cli("vitsweep", "-m", "experiment=smoke", "token.rr=3", cwd=workdir, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "vitsweep: error: token.rr: unknown key; valid: mode, r, keep_ratio, schedule, prop_attn"
    ]
    assert not (workdir / "multirun").exists()


def test_hydra_range_end_is_excluded_in_optuna() -> None:
    space = parse_space({"token.r": "range(0,16,4)", "arch.depth": "range(2,5)"})
    r, depth = space.distributions["token.r"], space.distributions["arch.depth"]
    assert (r.low, r.high, r.step) == (0, 12, 4)
    assert (depth.low, depth.high, depth.step) == (2, 4, 1)
    log_lr = parse_space({"train.lr": "tag(log, interval(1e-4, 1e-2))"}).distributions["train.lr"]
    assert log_lr.log and log_lr.low == pytest.approx(1e-4)
