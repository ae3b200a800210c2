"""The built-in datasets: the synthetic X-ray generator and user ImageFolder trees."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.ensemble import RandomForestClassifier
from sklearn.model_selection import cross_val_score

from vitsweep import data
from vitsweep.data import xray
from vitsweep.data.folder import load_folder
from vitsweep.data.xray import CLASSES, generate, load_xray
from vitsweep.spec import ConfigError, DataSpec

SMALL = DataSpec(name="xray_synth", image_size=24, samples_per_class=20, seed=3)


# --- synthetic X-ray -------------------------------------------------------------------------


def test_xray_splits_shapes_and_stratification():
    splits = load_xray(SMALL)
    n = len(CLASSES) * SMALL.samples_per_class
    assert splits.num_classes == len(CLASSES) >= 6
    assert splits.class_names == CLASSES
    assert splits.in_chans == SMALL.slices == 3
    assert splits.image_size == 24
    sizes = [len(s) for s in (splits.train, splits.val, splits.test)]
    assert sum(sizes) == n
    assert sizes[1] == pytest.approx(n * SMALL.val_fraction, abs=len(CLASSES))
    assert sizes[2] == pytest.approx(n * SMALL.test_fraction, abs=len(CLASSES))
    x, y = splits.val.tensors
    assert x.shape == (sizes[1], 3, 24, 24) and x.dtype == torch.float32
    assert y.dtype == torch.int64
    per_class = torch.bincount(y, minlength=len(CLASSES))
    assert per_class.min() >= 3 and per_class.max() <= 5  # stratified: 4 of 20 each, +-1
    everything = torch.cat([s.tensors[0] for s in (splits.train, splits.val, splits.test)])
    assert abs(everything.mean().item()) < 0.25  # normalised: centred, about unit range
    assert 0.2 < everything.std().item() < 1.0
    assert torch.isfinite(everything).all()


def test_held_out_splits_are_drawn_apart_balanced_and_cached(tmp_path):
    spec = dataclasses.replace(SMALL, val_size=30, test_size=23)
    splits = load_xray(spec, tmp_path)
    assert len(splits.train) == len(CLASSES) * SMALL.samples_per_class  # the whole pool trains
    assert (len(splits.val), len(splits.test)) == (30, 23)
    counts = torch.bincount(splits.test.tensors[1], minlength=len(CLASSES))
    assert counts.max() - counts.min() <= 1  # balanced classes
    files = sorted(tmp_path.glob("xray-*.npy"))
    assert len(files) == 3  # pool, val and test: rendered once, kept on disk
    # Different random streams: no held-out image repeats a training image.
    train_x, val_x = splits.train.tensors[0], splits.val.tensors[0]
    assert torch.cdist(val_x.flatten(1), train_x.flatten(1)).min() > 1.0
    # A second load reads the files (same bytes) and a new pool size reuses val and test.
    stamp = [f.stat().st_mtime_ns for f in files]
    assert torch.equal(load_xray(spec, tmp_path).train.tensors[0], train_x)
    again = load_xray(dataclasses.replace(spec, samples_per_class=15), tmp_path)
    assert torch.equal(again.test.tensors[0], splits.test.tensors[0])
    assert [f.stat().st_mtime_ns for f in files] == stamp
    # The cached pool is the pool the generator draws (class-major, stream 0).
    x, y = generate(spec)
    assert torch.equal(train_x, torch.from_numpy(x))
    assert torch.equal(splits.train.tensors[1], torch.from_numpy(y.astype("int64")))
    # Without a cache directory the same images are rendered in memory.
    assert torch.equal(load_xray(spec).val.tensors[0], splits.val.tensors[0])


def test_held_out_sizes_come_together():
    with pytest.raises(ConfigError, match=r"data\.val_size"):
        dataclasses.replace(SMALL, val_size=10)


def test_xray_is_deterministic_and_seeded():
    a, ya = generate(SMALL)
    b, yb = generate(SMALL)
    assert a.tobytes() == b.tobytes() and np.array_equal(ya, yb)  # bit-identical
    c, _ = generate(dataclasses.replace(SMALL, seed=4))
    assert np.abs(a - c).mean() > 0.1


@pytest.mark.parametrize(("slices", "size"), [(1, 16), (5, 40)])
def test_xray_slices_and_sizes(slices, size):
    spec = dataclasses.replace(SMALL, slices=slices, in_chans=slices, image_size=size)
    x, _ = generate(spec)
    assert x.shape == (len(CLASSES) * SMALL.samples_per_class, slices, size, size)
    assert np.isfinite(x).all()


def test_xray_classes_are_distinct():
    """Per-class statistics differ, and a plain classifier on translation-free features (grey
    level quantiles per slice, correlation between slices) beats chance (1/7) by far."""
    x, y = generate(dataclasses.replace(SMALL, samples_per_class=50, image_size=32))
    n, s = x.shape[:2]
    flat = x.reshape(n, s, -1)
    quantiles = np.quantile(flat, [0.02, 0.1, 0.3, 0.5, 0.7, 0.9, 0.98], axis=2)
    centred = flat - flat.mean(2, keepdims=True)
    corr = [
        (centred[:, a] * centred[:, b]).mean(1) / (flat[:, a].std(1) * flat[:, b].std(1))
        for a in range(s)
        for b in range(a + 1, s)
    ]
    features = np.concatenate([quantiles.transpose(1, 2, 0).reshape(n, -1), np.stack(corr, 1)], 1)
    clf = RandomForestClassifier(n_estimators=100, random_state=0)
    accuracy = cross_val_score(clf, features, y, cv=3).mean()
    assert accuracy > 3 / len(CLASSES), accuracy  # chance is 1/7

    means = np.stack([x[y == c].mean(0) for c in range(len(CLASSES))])
    gaps = np.abs(means[:, None] - means[None]).mean((2, 3, 4))
    off_diagonal = gaps[~np.eye(len(CLASSES), dtype=bool)]
    assert off_diagonal.min() > 0.0 and off_diagonal.mean() > 0.02


def _defect_energy_per_slice(cls: int, slices: int = 3) -> np.ndarray:
    """Share of the squared difference to the same boards rendered defect-free, per slice."""
    n = 24
    rng = np.random.default_rng(11)
    scenes = xray.draw_scenes(np.full(n, xray.GOOD), 32, slices, rng)
    good = xray.render(scenes, np.random.default_rng(5))
    bad = xray.render(dataclasses.replace(scenes, label=np.full(n, cls)), np.random.default_rng(5))
    energy = ((bad - good) ** 2).sum(axis=(0, 2, 3))
    assert energy.sum() > 1.0, "the defect must change the images"
    return energy / energy.sum()


@pytest.mark.parametrize(
    ("cls", "depth"),
    [(xray.VOID, 1), (xray.BRIDGE, 1), (xray.NON_WET, 0), (xray.CRACK, 2)],
    ids=["void-middle", "bridge-middle", "non_wet-pad", "crack-die"],
)
def test_xray_depth_carries_signal(cls, depth):
    """Depth-localised defects change mainly their own slice (same boards, same noise)."""
    share = _defect_energy_per_slice(cls)
    assert share[depth] > 0.75, share


def test_xray_misalignment_needs_two_depths():
    """A shifted die moves the die-side slice more than the pad-side one."""
    share = _defect_energy_per_slice(xray.MISALIGNED)
    assert share[2] > 2 * share[0], share


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"in_chans": 1}, "data.in_chans"),
        ({"slices": 4}, "data.slices"),
        ({"image_size": 12}, "data.image_size"),
    ],
)
def test_xray_bad_spec_is_a_one_line_error(change, key):
    with pytest.raises(ConfigError, match=key) as err:
        load_xray(dataclasses.replace(SMALL, **change))
    assert "\n" not in str(err.value)


# --- ImageFolder trees -----------------------------------------------------------------------

WHITE_GREY = ("L", 255)  # class "a": white greyscale files
RED_RGB = ("RGB", (255, 0, 0))  # class "b": red colour files


def _write(path: Path, mode: str, colour, size=(12, 9)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, colour).save(path)


def _tree(root: Path, splits=("train", "val", "test"), per_class: int = 3) -> Path:
    """Class a: greyscale PNGs; class b: RGB PNGs (plus one RGB file in a, to mix modes)."""
    for split in splits:
        for i in range(per_class):
            _write(root / split / "a" / f"{i}.png", *WHITE_GREY, size=(10 + i, 7))
            _write(root / split / "b" / f"{i}.png", *RED_RGB, size=(8, 13 + i))
        _write(root / split / "a" / "rgb_white.png", "RGB", (255, 255, 255))
        (root / split / "a" / "notes.txt").write_text("not an image")
        (root / split / ".ipynb_checkpoints").mkdir()  # hidden folder: not a class
    return root


def _spec(root: Path, **kw) -> DataSpec:
    return DataSpec(name="folder", root=str(root), image_size=16, in_chans=3, **kw)


def test_folder_loads_mixed_grey_and_rgb(tmp_path):
    splits = data.load(_spec(_tree(tmp_path / "tree")))
    assert splits.class_names == ("a", "b") and splits.num_classes == 2
    assert (len(splits.train), len(splits.val), len(splits.test)) == (7, 7, 7)
    labels = sorted(int(splits.train[i][1]) for i in range(len(splits.train)))
    assert labels == [0, 0, 0, 0, 1, 1, 1]
    for i in range(len(splits.train)):
        x, y = splits.train[i]
        assert x.shape == (3, 16, 16) and x.dtype == torch.float32
        expected = [1.0, 1.0, 1.0] if y == 0 else [1.0, -1.0, -1.0]  # white / red in [-1, 1]
        assert torch.allclose(x.mean((1, 2)), torch.tensor(expected), atol=1e-3)


def test_folder_converts_to_one_channel(tmp_path):
    splits = load_folder(dataclasses.replace(_spec(_tree(tmp_path / "tree")), in_chans=1))
    red = next(x for x, y in splits.val if y == 1)
    assert red.shape == (1, 16, 16)
    grey = round(0.299 * 255) / 255  # PIL's ITU-R 601-2 luma of pure red
    assert red.mean().item() == pytest.approx((grey - 0.5) / 0.5, abs=0.01)


def test_folder_without_test_falls_back_to_val(tmp_path, caplog):
    root = _tree(tmp_path / "tree", splits=("train", "val"))
    with caplog.at_level(logging.WARNING, logger="vitsweep.data.folder"):
        splits = load_folder(_spec(root))
    assert splits.test is splits.val
    assert "no test/" in caplog.text


def test_folder_decodes_lazily(tmp_path):
    """Pixels are read on access, not at load time (big trees must not be held in memory)."""
    root = _tree(tmp_path / "tree")
    splits = load_folder(_spec(root))
    index = next(i for i, (path, y) in enumerate(splits.val.samples) if y == 1)
    _write(Path(splits.val.samples[index][0]), "RGB", (0, 0, 255))  # now blue
    assert torch.allclose(splits.val[index][0].mean((1, 2)), torch.tensor([-1.0, -1.0, 1.0]))


def _missing_root(root: Path) -> Path:
    return root  # never created


def _missing_val(root: Path) -> Path:
    _tree(root, splits=("train",))
    return root / "val"


def _empty_class(root: Path) -> Path:
    _tree(root)
    empty = root / "val" / "c"
    empty.mkdir()
    (empty / "readme.md").write_text("no images here")
    for split in ("train", "test"):
        _write(root / split / "c" / "0.png", *WHITE_GREY)
    return empty


def _unreadable(root: Path) -> Path:
    _tree(root)
    bad = root / "train" / "b" / "broken.png"
    bad.write_bytes(b"this is not a png at all")
    return bad


def _other_classes(root: Path) -> Path:
    _tree(root)
    _write(root / "test" / "zebra" / "0.png", *RED_RGB)
    return root / "test"


@pytest.mark.parametrize(
    "make", [_missing_root, _missing_val, _empty_class, _unreadable, _other_classes]
)
def test_folder_bad_tree_is_a_one_line_error_naming_the_path(tmp_path, make):
    named = make(tmp_path / "tree")
    with pytest.raises(ConfigError) as err:
        load_folder(_spec(tmp_path / "tree"))
    message = str(err.value)
    assert "\n" not in message
    assert str(named) in message


def test_folder_truncated_image_fails_on_access_naming_it(tmp_path):
    root = _tree(tmp_path / "tree")
    victim = root / "val" / "b" / "big.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(victim)
    victim.write_bytes(victim.read_bytes()[:200])  # header intact, pixel data cut
    splits = load_folder(_spec(root))
    index = [Path(p) for p, _ in splits.val.samples].index(victim)
    with pytest.raises(ConfigError, match=str(victim)):
        splits.val[index]


@pytest.mark.parametrize(
    ("spec", "key"),
    [
        (DataSpec(name="folder", root=None), "data.root"),
        (DataSpec(name="folder", root=".", in_chans=2), "data.in_chans"),
    ],
)
def test_folder_bad_spec(spec, key):
    with pytest.raises(ConfigError, match=key):
        load_folder(spec)
