"""A user's own images: an ImageFolder tree `root/{train,val[,test]}/<class>/<image>`.

Images decode lazily (torchvision's ImageFolder), so trees larger than memory work; everything
that would otherwise fail halfway through a trial is checked up front instead: the splits exist,
every class folder holds images, all splits have the same classes, and every image's header
opens (PIL reads only the header here, so this costs one small read per file).
If there is no test/ split, the test metrics are computed on val/ (a warning says so).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from PIL import Image, UnidentifiedImageError
from torchvision import transforms
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS

from vitsweep.data.splits import Splits
from vitsweep.spec import ConfigError, DataSpec

log = logging.getLogger(__name__)

_MODES = {1: "L", 3: "RGB"}  # in_chans -> PIL mode every image is converted to


def _is_image(path: str) -> bool:
    """An image file by extension, as ImageFolder decides, minus hidden files (._x.png)."""
    name = os.path.basename(path)
    return name.lower().endswith(IMG_EXTENSIONS) and not name.startswith(".")


def _class_dirs(split: Path) -> list[str]:
    """Class folder names, sorted; hidden folders (.ipynb_checkpoints, ...) are not classes."""
    return sorted(e.name for e in os.scandir(split) if e.is_dir() and not e.name.startswith("."))


class _ImageTree(ImageFolder):
    """torchvision's ImageFolder with our class listing (hidden folders skipped)."""

    def find_classes(self, directory: str | Path) -> tuple[list[str], dict[str, int]]:
        classes = _class_dirs(Path(directory))
        return classes, {c: i for i, c in enumerate(classes)}


class _Loader:
    """Decode one file to `mode`; a file that stopped being readable is a one-line error."""

    def __init__(self, mode: str) -> None:
        self.mode = mode

    def __call__(self, path: str) -> Image.Image:
        try:
            with Image.open(path) as img:
                return img.convert(self.mode)
        except (OSError, UnidentifiedImageError, ValueError) as e:
            raise ConfigError(f"data.root: unreadable image {path} ({e})") from None


def _check_split(split: Path) -> list[str]:
    """The split's classes after checking each holds images whose headers open."""
    if not split.is_dir():
        raise ConfigError(f"data.root: missing split folder {split}")
    classes = _class_dirs(split)
    if not classes:
        raise ConfigError(f"data.root: split folder {split} has no class folders")
    for name in classes:
        folder = split / name
        files = [  # the same walk ImageFolder does (recursive, following links)
            os.path.join(d, f)
            for d, _, names in sorted(os.walk(folder, followlinks=True))
            for f in sorted(names)
            if _is_image(f)
        ]
        if not files:
            raise ConfigError(
                f"data.root: class folder {folder} has no images ({', '.join(IMG_EXTENSIONS)})"
            )
        for path in files:
            try:
                with Image.open(path):  # header only: no pixel decoding here
                    pass
            except (OSError, UnidentifiedImageError, ValueError) as e:
                raise ConfigError(f"data.root: unreadable image {path} ({e})") from None
    return classes


def load_folder(spec: DataSpec) -> Splits:
    """Lazy train/val/test datasets from `spec.root`, converted to `spec.in_chans` channels and
    resized to `spec.image_size` squared (squashed, not cropped: a defect at the border of an
    inspection image must not be cut away)."""
    if not spec.root:
        raise ConfigError(
            "data.root: required for data=folder (an ImageFolder tree with train/ val/)"
        )
    if spec.in_chans not in _MODES:
        raise ConfigError(
            f"data.in_chans={spec.in_chans}: data=folder supports 1 (grey) or 3 (RGB)"
        )
    if spec.image_size < 1:
        raise ConfigError(f"data.image_size={spec.image_size}: must be >= 1")
    root = Path(spec.root).expanduser()
    if not root.is_dir():
        raise ConfigError(f"data.root: {root} is not a directory")

    names = ["train", "val"] + (["test"] if (root / "test").is_dir() else [])
    if "test" not in names:
        log.warning("data.root=%s has no test/ split: test metrics are computed on val/", root)
    classes = {name: _check_split(root / name) for name in names}
    for name in names[1:]:
        if classes[name] != classes["train"]:
            only_train = sorted(set(classes["train"]) - set(classes[name]))
            only_here = sorted(set(classes[name]) - set(classes["train"]))
            raise ConfigError(
                f"data.root: class folders differ between {root / 'train'} and {root / name} "
                f"(only in train: {only_train}, only in {name}: {only_here})"
            )

    c = spec.in_chans
    transform = transforms.Compose(
        [
            transforms.Resize((spec.image_size, spec.image_size), antialias=True),
            transforms.ToTensor(),
            transforms.Normalize([0.5] * c, [0.5] * c),  # [-1, 1], like the digits set
        ]
    )
    loader = _Loader(_MODES[c])
    data = {
        name: _ImageTree(
            str(root / name), transform=transform, loader=loader, is_valid_file=_is_image
        )
        for name in names
    }
    return Splits(
        train=data["train"],
        val=data["val"],
        test=data.get("test", data["val"]),
        num_classes=len(classes["train"]),
        in_chans=c,
        image_size=spec.image_size,
        class_names=tuple(classes["train"]),
    )
