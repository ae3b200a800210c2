"""Training: schedule, resume after interruption, caching, the worker lock, `build_model`."""

from __future__ import annotations

import dataclasses
import itertools
import math
import threading
from functools import partial

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer
from torch.utils.data import Subset

from vitsweep import data
from vitsweep.models import build_model, load_supernet, train_supernet
from vitsweep.models.checkpoint import CheckpointError, checksum_path, damage
from vitsweep.models.train import lr_factor, supernet_path
from vitsweep.spec import ArchSpec, ConfigError, DataSpec, SpaceSpec, TrainSpec

DATA = DataSpec(image_size=16)  # scikit-learn digits, real data, upsampled to 16 px
SPACE = SpaceSpec(embed_dim=(16, 32), depth=(1, 2), mlp_ratio=(1.0, 2.0), num_heads=(1, 2),
                  head_dim=8)  # fmt: skip
TRAIN = TrainSpec(epochs=3, batch_size=32, lr=3e-3, warmup_epochs=1, progress=False)


pytestmark = pytest.mark.usefixtures("one_thread")


class Interrupted(Exception):
    """Stands in for a kill after an epoch's checkpoint is on disk."""


@pytest.fixture(scope="module")
def splits() -> data.Splits:
    full = data.load(DATA)
    return dataclasses.replace(full, train=Subset(full.train, range(160)))


def supernet_arch(**dims) -> ArchSpec:
    dims = {"embed_dim": 16, "depth": 2, "num_heads": (1, 2), "mlp_ratio": 2.0, **dims}
    return ArchSpec(kind="supernet", img_size=16, patch_size=4, space=SPACE, **dims)


def test_lr_schedule_warms_up_linearly_then_decays_by_cosine_to_min() -> None:
    f = [lr_factor(s, warmup_steps=4, total_steps=20, min_ratio=0.01) for s in range(21)]
    assert f[:4] == [0.25, 0.5, 0.75, 1.0]
    assert all(a >= b for a, b in itertools.pairwise(f[3:]))
    assert math.isclose(f[12], 0.01 + 0.99 * 0.5, rel_tol=1e-9)  # half way through the cosine
    assert math.isclose(f[20], 0.01)


def test_interrupted_training_resumes_on_the_same_schedule(splits, tmp_path) -> None:
    whole = train_supernet(SPACE, DATA, TRAIN, splits, tmp_path / "a", patch_size=4)

    seen: list[int] = []

    def kill_after_first(record: dict) -> None:
        seen.append(record["epoch"])
        if record["epoch"] == 1:
            raise Interrupted

    root = tmp_path / "b"
    with pytest.raises(Interrupted):
        train_supernet(SPACE, DATA, TRAIN, splits, root, patch_size=4, on_epoch=kill_after_first)
    final = supernet_path(SPACE, DATA, TRAIN, root, img_size=16, patch_size=4)
    assert not final.exists() and final.with_suffix(".train.pt").exists()
    resumed = train_supernet(
        SPACE, DATA, TRAIN, splits, root, patch_size=4, on_epoch=kill_after_first
    )
    assert seen == [1, 2, 3]  # the second call started at epoch 2
    assert not final.with_suffix(".train.pt").exists()

    a, b = load_supernet(whole), load_supernet(resumed)
    steps = math.ceil(160 / TRAIN.batch_size)
    assert len(b.meta["lrs"]) == TRAIN.epochs * steps
    assert b.meta["lrs"] == pytest.approx(a.meta["lrs"], rel=1e-12)
    assert max(b.meta["lrs"]) == pytest.approx(TRAIN.lr)
    assert [r["epoch"] for r in b.meta["history"]] == [1, 2, 3]
    assert b.meta["history"][-1]["loss"] < b.meta["history"][0]["loss"]  # it learns
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(pb, pa, rtol=1e-5, atol=1e-6, msg=name)


def test_second_call_is_a_cache_hit(splits, tmp_path) -> None:
    train = dataclasses.replace(TRAIN, epochs=1)
    path = train_supernet(SPACE, DATA, train, splits, tmp_path, patch_size=4)
    stamp = path.stat().st_mtime_ns
    epochs: list[dict] = []
    again = train_supernet(
        SPACE, DATA, train, splits, tmp_path, patch_size=4, on_epoch=epochs.append
    )
    # no epoch ran and the file was not rewritten (not a wall-clock bound: the suite shares cores)
    assert again == path and epochs == [] and path.stat().st_mtime_ns == stamp
    other = train_supernet(
        SPACE, DATA, dataclasses.replace(train, seed=1), splits, tmp_path, patch_size=4
    )
    assert other != path  # the key covers the training config


def test_two_workers_starting_together_train_once(splits, tmp_path) -> None:
    train = dataclasses.replace(TRAIN, epochs=1)
    epochs: list[dict] = []
    paths = []
    start = threading.Barrier(2)

    def worker() -> None:
        start.wait()
        paths.append(
            train_supernet(
                SPACE, DATA, train, splits, tmp_path, patch_size=4, on_epoch=epochs.append
            )
        )

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(paths) == 2 and paths[0] == paths[1] and paths[0].exists()
    assert len(epochs) == 1  # one epoch trained in all: the second worker waited and loaded


def test_build_model_extracts_a_subnet_of_the_cached_supernet(splits, tmp_path) -> None:
    train = dataclasses.replace(TRAIN, epochs=1)
    arch = supernet_arch()
    model = build_model(arch, train, DATA, splits, str(tmp_path))
    assert isinstance(model, VisionTransformer) and not model.training
    assert [b.attn.num_heads for b in model.blocks] == [1, 2]
    assert next(model.parameters()).dtype == torch.float32
    path = supernet_path(SPACE, DATA, train, tmp_path, img_size=16, patch_size=4)
    net = load_supernet(path)
    assert load_supernet(path) is net  # memoised: trials in one process do not reload
    x = torch.stack([splits.val[i][0] for i in range(4)])
    with torch.no_grad():
        torch.testing.assert_close(model(x), net(x, embed_dim=16, depth=2, num_heads=[1, 2],
                                                  mlp_ratio=2.0))  # fmt: skip
    again = build_model(arch, train, DATA, splits, str(tmp_path))
    assert again is not model  # a fresh module each time: surgery may modify it
    with pytest.raises(ConfigError, match=r"arch\.num_heads\[1\]=4: valid: 1, 2"):
        build_model(supernet_arch(num_heads=(1, 4)), train, DATA, splits, str(tmp_path))


def test_build_model_trains_a_standalone_vit_once_and_loads_checkpoints(splits, tmp_path) -> None:
    train = dataclasses.replace(TRAIN, epochs=1)
    arch = ArchSpec(kind="vit", img_size=16, patch_size=4, embed_dim=16, depth=1, num_heads=2)
    model = build_model(arch, train, DATA, splits, str(tmp_path))
    cached = list((tmp_path / "models").glob("*.pt"))
    assert len(cached) == 1
    stamp = cached[0].stat().st_mtime_ns
    again = build_model(arch, train, DATA, splits, str(tmp_path))
    assert cached[0].stat().st_mtime_ns == stamp
    x = torch.stack([splits.val[i][0] for i in range(4)])
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x))

    weights = tmp_path / "mine.pt"
    torch.save(model.state_dict(), weights)
    loaded = build_model(
        dataclasses.replace(arch, checkpoint=str(weights)), train, DATA, splits, "/nonexistent"
    )
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))

    weights.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"mine\.pt: unreadable checkpoint") as err:
        build_model(dataclasses.replace(arch, checkpoint=str(weights)), train, DATA, splits, "x")
    assert "\n" not in str(err.value)


def test_a_damaged_cache_is_moved_aside_and_rebuilt(splits, tmp_path, capfd) -> None:
    """A cache file that was truncated after it was written (checksum), or that is garbage
    without a checksum (load check), is never trusted: it is moved aside, named in one line,
    and the model is trained again, giving the weights an intact cache gives."""
    train = dataclasses.replace(TRAIN, epochs=1)
    path = supernet_path(SPACE, DATA, train, tmp_path, img_size=16, patch_size=4)
    good = build_model(supernet_arch(), train, DATA, splits, str(tmp_path))
    assert checksum_path(path).is_file() and damage(path, "supernet") is None
    x = torch.stack([splits.val[i][0] for i in range(4)])
    for harm in ("truncate", "garbage"):
        blob = path.read_bytes()
        if harm == "truncate":
            path.write_bytes(blob[: len(blob) // 2])
            assert "checksum mismatch" in str(damage(path, "supernet"))
        else:
            checksum_path(path).unlink()
            path.write_bytes(b"\x00garbage")
            assert "unreadable" in str(damage(path, "supernet"))
        again = build_model(supernet_arch(), train, DATA, splits, str(tmp_path))
        with torch.no_grad():
            torch.testing.assert_close(again(x), good(x))
        err = capfd.readouterr().err
        said = [ln for ln in err.splitlines() if "moved to" in ln]
        assert len(said) == 1 and str(path) in said[0], err
    aside = sorted(p.name for p in path.parent.glob(f"{path.name}.damaged-*"))
    assert len(aside) >= 1  # what was there is kept for inspection, never deleted


@pytest.mark.parametrize(
    ("arch", "message"),
    [
        (dict(img_size=32), r"arch\.img_size=32: differs from data\.image_size=16"),
        (dict(kind="cnn"), r"arch\.kind='cnn': valid: vit, supernet"),
        (dict(timm_name="no_such_vit"), r"arch\.timm_name='no_such_vit': unknown timm model"),
        (dict(timm_name="resnet18"), r"'resnet18': not buildable as a timm VisionTransformer"),
        (dict(kind="supernet", space=SPACE, head_dim=16), r"arch\.head_dim=16: the supernet"),
    ],
)
def test_bad_arch_is_a_one_line_config_error(splits, tmp_path, arch, message) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        build_model(ArchSpec(**{"img_size": 16, **arch}), TRAIN, DATA, splits, str(tmp_path))
    assert "\n" not in str(err.value)
    assert not any(tmp_path.iterdir())  # rejected before any training


def test_untrained_standalone_vit_is_seeded_and_not_cached(splits, tmp_path) -> None:
    arch = ArchSpec(kind="vit", img_size=16, patch_size=4, embed_dim=16, depth=1, num_heads=2)
    untrained = dataclasses.replace(TRAIN, epochs=0)
    a = build_model(arch, untrained, DATA, splits, str(tmp_path))
    b = build_model(arch, untrained, DATA, splits, str(tmp_path))
    torch.testing.assert_close(a.head.weight, b.head.weight, rtol=0, atol=0)
    assert not any(tmp_path.iterdir())


def test_bad_training_config_is_rejected(splits, tmp_path) -> None:
    empty = dataclasses.replace(splits, train=Subset(splits.train, []))
    with pytest.raises(ConfigError, match=r"training split is empty"):
        train_supernet(SPACE, DATA, TRAIN, empty, tmp_path)
    with pytest.raises(ConfigError, match=r"arch\.patch_size=5"):
        train_supernet(SPACE, DATA, TRAIN, splits, tmp_path, patch_size=5)


def test_inplace_distillation_teaches_the_small_subnets_from_the_largest(splits) -> None:
    """BigNAS in-place distillation: only the largest subnet sees the labels; the others learn
    the largest's soft predictions, so their loss does not change when the labels do."""
    import random

    from torch import nn

    from vitsweep.models.supernet import Supernet
    from vitsweep.models.train import sandwich_step

    torch.manual_seed(0)
    net = Supernet(SPACE, img_size=16, patch_size=4, in_chans=3, num_classes=10)
    x = torch.stack([splits.train[i][0] for i in range(8)])
    y1, y2 = torch.arange(8) % 10, (torch.arange(8) + 3) % 10
    ce = nn.CrossEntropyLoss()

    def rest(y: torch.Tensor, distill: str) -> float:
        """The smallest subnet's share of the sandwich loss (n_random=0: largest + smallest)."""
        total = sandwich_step(net, x, y, random.Random(0), ce, n_random=0, distill=distill)
        net.zero_grad()
        with torch.no_grad():
            return 2 * total - float(ce(net(x, shape=net.largest), y))

    assert rest(y1, "inplace") == pytest.approx(rest(y2, "inplace"), rel=1e-5)
    assert rest(y1, "none") != pytest.approx(rest(y2, "none"), rel=1e-3)


def test_same_seed_and_threads_train_the_same_weights_bit_for_bit(splits, tmp_path) -> None:
    """Same machine, same command, same front: training is seeded at a fixed thread count."""
    train = dataclasses.replace(TRAIN, epochs=1, distill="inplace", threads=1)
    a = load_supernet(train_supernet(SPACE, DATA, train, splits, tmp_path / "a", patch_size=4))
    b = load_supernet(train_supernet(SPACE, DATA, train, splits, tmp_path / "b", patch_size=4))
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name


@pytest.mark.parametrize("weight", [0.0, 0.5, 1.0])
def test_teacher_distillation_mixes_labels_and_the_teachers_soft_targets(splits, weight) -> None:
    """DeiT-style soft distillation: each subnet's loss is (1 - w) x CE(labels) + w x CE(the
    teacher's softmax), checked against torch's own soft-target cross-entropy."""
    import random

    from torch import nn
    from torch.nn import functional as F

    from vitsweep.models.supernet import Supernet
    from vitsweep.models.train import sandwich_step

    torch.manual_seed(0)
    net = Supernet(SPACE, img_size=16, patch_size=4, in_chans=3, num_classes=10)
    teacher = Supernet(SPACE, img_size=16, patch_size=4, in_chans=3, num_classes=10)
    teach = partial(teacher, shape=teacher.largest)
    x = torch.stack([splits.train[i][0] for i in range(8)])
    y = torch.arange(8) % 10
    ce = nn.CrossEntropyLoss()
    got = sandwich_step(
        net, x, y, random.Random(0), ce, n_random=0, distill="teacher", teacher=teach,
        weight=weight,
    )  # fmt: skip
    net.zero_grad()
    with torch.no_grad():
        soft = F.softmax(teach(x), dim=-1)
        want = (
            sum(
                (1 - weight) * F.cross_entropy(net(x, shape=s), y)
                + weight * F.cross_entropy(net(x, shape=s), soft)
                for s in (net.largest, net.smallest)
            )
            / 2
        )
    assert got == pytest.approx(float(want), rel=1e-5)


def test_the_teacher_is_the_studys_baseline_model_trained_once() -> None:
    """experiment=xray distils from its baseline: same architecture, same cache file, so the
    baseline trial and the supernet's teacher are one model, trained once."""
    from vitsweep import config
    from vitsweep.models.build import model_path

    sub = config.trial_spec(config.compose([]))
    cfg = config.compose([])
    base = config.trial_spec(
        config.compose([f"{k}={v}" for k, v in cfg.hydra.sweeper.baseline.items()])
    )
    assert sub.train.distill == "teacher" and sub.train.teacher == base.arch
    assert model_path(sub.train.teacher, sub.train, sub.data, sub.root) == model_path(
        base.arch, base.train, base.data, base.root
    )


def test_a_changed_renderer_retrains_instead_of_reusing_old_weights(monkeypatch) -> None:
    """The cache keys of models trained on generated images name the renderer's version: weights
    fitted to the old images are never served for the new ones under the same DataSpec."""
    from vitsweep.data import xray
    from vitsweep.models.build import model_path

    spec = DataSpec(name="xray_synth", image_size=16)
    arch = ArchSpec(kind="vit", img_size=16, patch_size=4, embed_dim=16, depth=1, num_heads=1)

    def paths() -> tuple:
        return (
            model_path(arch, TRAIN, spec, "root"),
            supernet_path(SPACE, spec, TRAIN, "root", img_size=16, patch_size=4),
        )

    before = paths()
    monkeypatch.setattr(xray, "GENERATOR_VERSION", xray.GENERATOR_VERSION + 1)
    after = paths()
    assert before[0] != after[0] and before[1] != after[1]
    monkeypatch.setattr(xray, "GENERATOR_VERSION", xray.GENERATOR_VERSION - 1)
    assert paths() == before  # the key is a function of the version, nothing else changed


def test_supernet_epochs_train_the_supernet_alone_longer(splits, tmp_path) -> None:
    """`train.supernet_epochs` sets the supernet's schedule; the teacher and every standalone
    model keep `train.epochs`, so the baseline's cache key does not move with it."""
    from vitsweep.models.build import model_path

    short = dataclasses.replace(TRAIN, epochs=1)
    longer = dataclasses.replace(short, supernet_epochs=2)
    arch = ArchSpec(kind="vit", img_size=16, patch_size=4, embed_dim=16, depth=1, num_heads=1)
    key = partial(supernet_path, SPACE, DATA, root=tmp_path, img_size=16, patch_size=4)
    assert key(train=dataclasses.replace(short, supernet_epochs=1)) == key(train=short)
    assert key(train=longer) != key(train=short)
    assert model_path(arch, longer, DATA, tmp_path) == model_path(arch, short, DATA, tmp_path)

    path = train_supernet(SPACE, DATA, longer, splits, tmp_path, patch_size=4)
    history = load_supernet(path).meta["history"]
    assert [h["epoch"] for h in history] == [1, 2]  # two epochs, not train.epochs=1
    with pytest.raises(ConfigError, match=r"train\.supernet_epochs"):
        dataclasses.replace(short, supernet_epochs=-1)


def test_vitsweep_train_trains_the_teacher_then_the_supernet_a_trial_uses(tmp_path) -> None:
    """`vitsweep-train` with `train.distill=teacher` (xray's recipe) trains the teacher first
    and writes the supernet under the key a trial looks up: a sweep afterwards trains nothing.
    `train.teacher={...}` on the command line, over smoke's null teacher, composes too."""
    from tests.conftest import run_cli
    from vitsweep import config

    teacher = "{kind: vit, img_size: 16, patch_size: 4, embed_dim: 16, depth: 1, num_heads: 1}"
    args = [
        "experiment=smoke",
        "arch=supernet",
        "arch.embed_dim=16",
        "arch.depth=1",
        "arch.num_heads=1",
        "arch.space.embed_dim=[16,32]",
        "arch.space.depth=[1,2]",
        "arch.space.num_heads=[1,2]",
        "arch.space.mlp_ratio=[1.0,2.0]",
        "arch.space.head_dim=8",
        "arch.head_dim=8",
        "train.epochs=1",
        "train.supernet_epochs=2",
        "train.distill=teacher",
        f"train.teacher={teacher}",
        "train.progress=false",
        f"paths.root={tmp_path}",
    ]
    out = run_cli("vitsweep-train", *args, cwd=tmp_path).stdout
    spec = config.trial_spec(config.compose(args))
    splits = data.load(spec.data, data.data_dir(spec.root))
    want = supernet_path(spec.arch.space, spec.data, spec.train, spec.root, img_size=16,
                         patch_size=4)  # fmt: skip
    assert f"supernet: {want}" in out and want.exists()
    assert [h["epoch"] for h in load_supernet(want).meta["history"]] == [1, 2]
    teachers = list((tmp_path / "models").glob("*.pt"))
    assert len(teachers) == 1  # the teacher, trained once, cached for the baseline trial too
    assert load_supernet(want).extract(embed_dim=16, depth=1, num_heads=1, mlp_ratio=1.0)(
        splits.val[0][0][None]
    ).shape == (1, splits.num_classes)
