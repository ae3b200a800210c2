"""Every config option composes; malformed input fails in one line naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import run_cli
from vitsweep import config
from vitsweep.search.space import parse_space

GROUPS = [
    "data", "arch", "token", "precision", "measure", "train", "runtime", "tracking", "experiment"
]  # fmt: skip


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (config.CONF_DIR / group).glob("*.yaml"))


@pytest.mark.parametrize("group", GROUPS)
def test_every_option_composes_to_a_spec(group: str) -> None:
    assert options(group), f"conf/{group} has no options"
    for option in options(group):
        extra = ["data.root=/tmp"] if option in ("folder", "paper") else []
        cfg = config.compose([f"{group}={option}", *extra])
        spec = config.trial_spec(cfg)
        ctx = config.sweep_context(cfg, cfg.hydra.sweeper)
        assert spec.root == "multirun"
        assert ctx.sweeper.n_trials >= 1
        if group in ("data", "token", "precision", "runtime"):
            assert getattr(spec, group).__class__.__name__.lower().startswith(group)


def test_experiment_sets_the_study_name_and_space() -> None:
    cfg = config.compose(["experiment=smoke"])
    ctx = config.sweep_context(cfg, cfg.hydra.sweeper)
    assert ctx.sweeper.study_name == "smoke"
    assert set(ctx.space.distributions) >= {"arch.embed_dim", "arch.depth"}


BAD = {
    "token.rr=3": "token.rr: unknown key",
    "precision=fp64": "precision=fp64: no such option; valid: bf16, fp16, fp32, int8, mixed, tq",
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
    # a nested spec's own check, under the key the user wrote (default experiment: xray)
    "train.teacher.depth=0": "train.teacher: arch.depth=0: must be >= 1",
    # the keys valid where the typo is (the teacher's ArchSpec), not those of the group
    "train.teacher.embed_dimm=3": "train.teacher.embed_dimm: unknown key; valid: kind, timm_name",
    "train.teacher=null": "train.teacher=None: train.distill=teacher needs a teacher",
    "train.distill_weight=2": "train.distill_weight=2.0: must be in [0, 1]",
    "runtime=tensorrt": "runtime=tensorrt: no such option; valid: onnxruntime, openvino, torch",
    "runtime.name=trt": "runtime.name='trt': valid: torch, onnxruntime, openvino",
    "runtime.opset=13": "runtime.opset=13: must be >= 16",
}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["runtime=onnxruntime", "precision=bf16"], "precision.mode=bf16: not run by runtime="
         "onnxruntime; valid there: fp32, int8"),
        (["runtime=openvino", "precision=mixed"], "precision.mode=mixed: not run by runtime="
         "openvino; valid there: fp32, bf16, fp16, int8"),
        (["runtime=onnxruntime", "precision=int8", "precision.int8_scheme=dynamic"],
         "precision.int8_scheme=dynamic: runtime=onnxruntime quantizes static int8 only"),
    ],
)  # fmt: skip
def test_a_runtime_refuses_a_precision_it_does_not_run_in_one_line(
    overrides: list[str], message: str, capsys
) -> None:
    with pytest.raises(SystemExit) as exc:
        config.check(overrides)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"vitsweep: error: {message}"), err


def test_runtime_is_searchable_like_the_other_axes() -> None:
    cfg = config.compose(["experiment=smoke"])
    assert config.trial_spec(cfg).runtime.name == "torch"  # today's behaviour by default
    sweep = "runtime=choice(torch,onnxruntime,openvino)"
    config.check(["-m", "experiment=smoke", sweep])  # a launch with it is accepted
    ctx = config.sweep_context(cfg, cfg.hydra.sweeper).with_cli_params([sweep])
    dist = ctx.space.distributions["runtime"]
    assert list(dist.choices) == ["torch", "onnxruntime", "openvino"]


FIXED = ["experiment=xray", "arch=vit"]  # a fixed ViT; the study sweeps token.r and precision


def _timm_vit_file(path: Path, depth: int, embed_dim: int | None = None) -> Path:
    """A state dict as timm writes it (not our builder) of FIXED's ViT, at `depth` layers."""
    import torch
    from timm.models.vision_transformer import VisionTransformer

    arch = config.trial_spec(config.compose(FIXED)).arch
    vit = VisionTransformer(
        img_size=arch.img_size, patch_size=arch.patch_size, in_chans=3, num_classes=7,
        embed_dim=embed_dim or arch.embed_dim, depth=depth, num_heads=arch.num_heads,
    )  # fmt: skip
    torch.save(vit.state_dict(), path)
    return path


def test_a_fixed_vit_checkpoint_must_fit_the_launch_before_any_trial(
    tmp_path: Path, capsys
) -> None:
    """A kind=vit file of another architecture, or a sweep that varies the architecture one
    file holds, is one line at launch (not a failed trial each until the failure rate stops
    the study); a fitting file passes, in a run and in a sweep of other keys."""
    import torch

    depth = config.trial_spec(config.compose(FIXED)).arch.depth
    fits = _timm_vit_file(tmp_path / "fits.pt", depth)
    deeper = _timm_vit_file(tmp_path / "deeper.pt", depth + 1)
    wider = _timm_vit_file(tmp_path / "wider.pt", depth, embed_dim=240)
    tensor = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), tensor)
    config.check([*FIXED, f"arch.checkpoint={fits}"])
    config.check(["-m", *FIXED, f"arch.checkpoint={fits}"])
    cases = [
        ([*FIXED, f"arch.checkpoint={deeper}"],
         f"{deeper}: weights do not match the model (Unexpected key(s) in state_dict: "
         f'"blocks.{depth}.'),
        (["-m", *FIXED, f"arch.checkpoint={wider}"],
         f"{wider}: weights do not match the model (size mismatch"),
        ([*FIXED, f"arch.checkpoint={tensor}"], f"{tensor}: checkpoint holds no state dict"),
        (["-m", *FIXED, f"arch.checkpoint={fits}", "arch.depth=choice(2,4)"],
         f"arch.checkpoint='{fits}': one file holds one architecture, but the sweep varies "
         "arch.depth"),
    ]  # fmt: skip
    for args, message in cases:
        with pytest.raises(SystemExit) as exc:
            config.check(args)
        assert exc.value.code == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith(f"vitsweep: error: {message}"), err


@pytest.mark.parametrize("override", sorted(BAD))
def test_malformed_override_is_one_line(override: str, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        config.check([override])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("vitsweep: error: ")
    assert BAD[override] in err, err


def test_two_hydra_run_modes_are_one_line_not_a_traceback(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        config.check(["-m", "experiment=smoke", "--cfg", "job"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [err] and err.startswith("vitsweep: error: -m --cfg: one at a")


def test_cli_reports_bad_override_in_one_line_and_writes_nothing(workdir: Path) -> None:
    proc = run_cli("vitsweep", "-m", "experiment=smoke", "token.rr=3", cwd=workdir, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "vitsweep: error: token.rr: unknown key; valid: mode, r, keep_ratio, schedule, prop_attn,"
        " compile_merge"
    ]
    assert not (workdir / "multirun").exists()


def test_hydra_range_end_is_excluded_in_optuna() -> None:
    space = parse_space({"token.r": "range(0,16,4)", "arch.depth": "range(2,5)"})
    r, depth = space.distributions["token.r"], space.distributions["arch.depth"]
    assert (r.low, r.high, r.step) == (0, 12, 4)
    assert (depth.low, depth.high, depth.step) == (2, 4, 1)
    log_lr = parse_space({"train.lr": "tag(log, interval(1e-4, 1e-2))"}).distributions["train.lr"]
    assert log_lr.log and log_lr.low == pytest.approx(1e-4)


def test_paper_experiment_is_deit_base_vs_autoformer_tome_half() -> None:
    """The paper's study: AutoFormer-T x ToMe x fp16/bf16 at 224 against DeiT-B/16 fp32."""
    cfg = config.compose(["experiment=paper", "data.root=/data"])
    spec, ctx = config.trial_spec(cfg), config.sweep_context(cfg, cfg.hydra.sweeper)
    assert (spec.arch.kind, spec.arch.img_size, spec.arch.space.embed_dim) == (
        "supernet",
        224,
        (192, 216, 240),
    )
    assert (spec.token.mode, spec.precision.mode, spec.measure.device) == ("tome", "fp16", "cuda")
    assert spec.train.epochs == 0  # nothing trains: weights from arch.checkpoint or random
    assert ctx.space.distributions["precision"].choices == ("fp16", "bf16")
    assert ctx.space.distributions["precision.cast"].choices == ("autocast", "full")
    # Trial 0 is composed from the launch plus the baseline's overrides, as the loop does it.
    base = dict(ctx.sweeper.baseline)
    lines = [f"{k}={'null' if v is None else v}" for k, v in base.items()]
    baseline = config.trial_spec(config.compose(["experiment=paper", "data.root=/data", *lines]))
    assert baseline.arch.timm_name == "deit_base_patch16_224"
    assert (baseline.arch.kind, baseline.arch.embed_dim, baseline.arch.checkpoint) == (
        "vit",
        768,
        None,
    )
    assert (baseline.token.mode, baseline.precision.mode) == ("none", "fp32")


@pytest.mark.slow
def test_paper_trial_runs_on_cpu_from_an_image_folder(workdir: Path) -> None:
    """One paper candidate end to end on CPU (random weights, bf16, ToMe r=8) on a written tree."""
    from PIL import Image

    for split in ("train", "val"):
        for cls, colour in (("good", (20, 20, 20)), ("void", (230, 230, 230))):
            for i in range(3):
                path = workdir / "tree" / split / cls / f"{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (40 + i, 30), colour).save(path)
    proc = run_cli(
        "vitsweep",
        "experiment=paper",
        f"data.root={workdir / 'tree'}",
        "measure=quick",
        "measure.batch_size=2",
        "precision=bf16",
        "token.r=8",
        "arch.embed_dim=192",
        "arch.depth=12",
        "tracking=none",
        cwd=workdir,
        timeout=600,
    )
    metrics = dict(
        line.split(None, 1) for line in proc.stdout.splitlines() if line and line[0] != "["
    )
    assert metrics["energy_source"] == "estimate"
    # AutoFormer-T at embed 192, depth 12 (mlp 4, 4 heads of 64): about 5.7M params like ViT-Ti
    assert 5.0e6 < float(metrics["params"]) < 6.5e6
    assert 0.0 <= float(metrics["accuracy"]) <= 1.0


def test_help_speaks_as_vitsweep_and_lists_only_pickable_options(tmp_path) -> None:
    out = run_cli("vitsweep", "--help", cwd=tmp_path).stdout
    assert out.startswith("usage: vitsweep ") and "Hydra" not in out and "base_" not in out
    assert "precision       bf16, fp16, fp32*, int8, mixed, tq" in out
    assert len(out.splitlines()) < 25
    assert not (tmp_path / "multirun").exists()  # asking for help writes nothing


def test_point_specs_equal_a_whole_compose_without_composing_each_point() -> None:
    """The search bench prices 100,000 points through `PointSpecs`: each spec must be the one
    the sweeper's job would compose, for the study's points and its baseline (group choices
    `arch: vit`, `token: none` beside field values)."""
    import optuna

    base = ["experiment=xray", "tracking=none"]
    cfg = config.compose(base)
    sweeper = config.sweeper_spec(cfg.hydra.sweeper)
    space = parse_space(sweeper.params, sweeper.space_hook)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    points = [dict(sweeper.baseline)]
    for _ in range(12):
        trial = study.ask()
        points.append(space.sample(trial, config.trial_spec(cfg)))
        study.tell(trial, 0.0)
    specs = config.PointSpecs(base)
    for point in points:
        lines = [*base, *(config.format_override(k, v) for k, v in point.items())]
        assert specs.spec(point) == config.trial_spec(config.compose(lines)), point
    assert specs.composed_whole == 0
    # precision x (arch, token) choices: one compose per combination, not per point
    assert len(specs._composed) <= 4


def test_point_specs_compose_whole_a_point_whose_key_is_interpolated() -> None:
    """arch.img_size is `${data.image_size}`: setting data.image_size on the resolved groups
    would leave arch.img_size stale, so such a point is composed whole."""
    base = ["experiment=smoke", "tracking=none"]
    specs = config.PointSpecs(base)
    point = {"data.image_size": 8, "token.r": 1}
    got = specs.spec(point)
    assert specs.composed_whole == 1
    assert got.arch.img_size == 8
    lines = [*base, *(config.format_override(k, v) for k, v in point.items())]
    assert got == config.trial_spec(config.compose(lines))
