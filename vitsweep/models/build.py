"""`build_model`: the model a trial measures, from an `ArchSpec` (trained or loaded as needed)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from vitsweep.data import generator_version
from vitsweep.data.splits import Splits
from vitsweep.models.checkpoint import (
    CheckpointError,
    cache_key,
    load_state,
    one_line,
    plain,
    readable,
)
from vitsweep.models.spaces import subnet_shape
from vitsweep.models.supernet import Supernet
from vitsweep.models.train import (
    standalone_key,
    supernet_path,
    train_standalone,
    train_supernet,
)
from vitsweep.models.vit import ViTShape, build_vit
from vitsweep.spec import ArchSpec, ConfigError, DataSpec, TrainSpec

# Loaded supernets by (file, mtime): trials in one worker extract from memory, not from disk.
_SUPERNETS: dict[tuple[str, int], Supernet] = {}


def load_supernet(path: str | Path) -> Supernet:
    """`Supernet.load` memoised per process (a rewritten file has a new mtime and reloads)."""
    path = Path(path).resolve()
    memo = (str(path), path.stat().st_mtime_ns if path.exists() else 0)
    net = _SUPERNETS.get(memo)
    if net is None:
        net = _SUPERNETS[memo] = Supernet.load(path)
    return net


def vit_shape(arch: ArchSpec) -> ViTShape:
    """The composed dims of a fixed ViT, checked so that timm never fails an assert."""
    for key in ("embed_dim", "depth"):
        v = getattr(arch, key)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(f"arch.{key}={v}: need a positive integer")
    try:
        shape = ViTShape.of(
            arch.embed_dim, arch.depth, arch.num_heads, arch.mlp_ratio, arch.head_dim
        )
    except ValueError:
        raise ConfigError(
            f"arch.num_heads/arch.mlp_ratio: give one value or {arch.depth} (arch.depth) entries"
        ) from None
    for i, (h, r) in enumerate(zip(shape.num_heads, shape.mlp_ratio, strict=True)):
        if h < 1 or (arch.head_dim is None and arch.embed_dim % h):
            raise ConfigError(
                f"arch.num_heads={h} (layer {i}): must divide arch.embed_dim={arch.embed_dim}, "
                "or set arch.head_dim"
            )
        if r <= 0:
            raise ConfigError(f"arch.mlp_ratio={r} (layer {i}): need a positive number")
    return shape


def _check_geometry(arch: ArchSpec, splits: Splits) -> None:
    if arch.img_size != splits.image_size:
        raise ConfigError(
            f"arch.img_size={arch.img_size}: differs from data.image_size={splits.image_size}"
        )
    if arch.timm_name is None and (arch.patch_size < 1 or arch.img_size % arch.patch_size):
        raise ConfigError(
            f"arch.patch_size={arch.patch_size}: must divide arch.img_size={arch.img_size}"
        )


@dataclass(frozen=True)
class Geometry:
    """The input/output sizes a model is built for: what `make_vit` reads from `Splits`, kept
    apart so that a model can be rebuilt (an export) without its dataset."""

    image_size: int
    in_chans: int
    num_classes: int


def make_vit(arch: ArchSpec, splits: Splits | Geometry) -> nn.Module:
    """A randomly initialised timm ViT: `arch.timm_name` if set, else the composed dims."""
    if arch.timm_name is not None:
        if not timm.is_model(arch.timm_name):
            raise ConfigError(
                f"arch.timm_name={arch.timm_name!r}: unknown timm model; "
                "valid: a timm ViT name, e.g. vit_tiny_patch16_224, deit_base_patch16_224"
            )
        try:
            model = timm.create_model(
                arch.timm_name,
                pretrained=False,
                num_classes=splits.num_classes,
                in_chans=splits.in_chans,
                img_size=splits.image_size,
            )
        except Exception as e:
            raise ConfigError(
                f"arch.timm_name={arch.timm_name!r}: not buildable as a timm VisionTransformer "
                f"at {splits.image_size} px ({one_line(e)})"
            ) from None
        if not isinstance(model, VisionTransformer):
            raise ConfigError(
                f"arch.timm_name={arch.timm_name!r}: not a timm VisionTransformer "
                "(ToMe and the supernet need one); e.g. vit_small_patch16_224"
            )
        return model
    return build_vit(
        vit_shape(arch),
        img_size=splits.image_size,
        patch_size=arch.patch_size,
        in_chans=splits.in_chans,
        num_classes=splits.num_classes,
    )


def _load_weights(model: nn.Module, path: str | Path) -> None:
    """Weights from a file of ours (`{"state_dict": ...}`) or a bare/`{"model": ...}` state dict."""
    path = Path(path)
    obj = readable(path, key="arch.checkpoint")
    if isinstance(obj, dict):
        obj = obj.get("state_dict", obj.get("model", obj))
    load_state(model, obj, path)


def model_path(arch: ArchSpec, train: TrainSpec, data: DataSpec, root: str | Path) -> Path:
    """<root>/models/<key>.pt, key = hash of data (and its renderer) + arch + training."""
    arch_key = plain(arch)
    arch_key.pop("checkpoint", None)
    arch_key.pop("space", None)
    key = cache_key(
        kind="model",
        data=data,
        generator=generator_version(data),
        arch=arch_key,
        train=standalone_key(train),
    )
    return Path(root) / "models" / f"{key}.pt"


def _supernet_for(
    arch: ArchSpec, train: TrainSpec, data: DataSpec, splits: Splits, root: str | Path
) -> Supernet:
    if arch.checkpoint is not None:
        _check_space(arch)
        net = load_supernet(arch.checkpoint)
        got = (net.img_size, net.patch_size, net.in_chans, net.num_classes)
        want = (splits.image_size, arch.patch_size, splits.in_chans, splits.num_classes)
        if got != want:
            raise CheckpointError(
                f"{arch.checkpoint}: supernet for (img_size, patch_size, in_chans, classes)="
                f"{got}, but data + arch give {want}"
            )
        return net
    return load_supernet(supernet_file(arch, train, data, splits, root))


def _check_space(arch: ArchSpec) -> None:
    if arch.space is None:
        raise ConfigError("arch.space: required when arch.kind=supernet (e.g. arch=supernet)")
    if arch.head_dim is not None and arch.head_dim != arch.space.head_dim:
        raise ConfigError(
            f"arch.head_dim={arch.head_dim}: the supernet fixes it to "
            f"arch.space.head_dim={arch.space.head_dim}"
        )


def supernet_file(
    arch: ArchSpec, train: TrainSpec, data: DataSpec, splits: Splits, root: str | Path
) -> Path:
    """The trained supernet of (data, arch.space, train): cached, else trained now, after its
    teacher (`train.teacher`, a standalone model with its own cache) when it has one. Trials
    and `vitsweep-train` both come here, so both train the same supernet under the same key."""
    _check_space(arch)
    assert arch.space is not None
    teacher = train.teacher

    def make_teacher() -> nn.Module:  # the standalone model's own cache: trained once, shared
        assert teacher is not None
        return build_model(teacher, train, data, splits, root)

    return train_supernet(
        arch.space,
        data,
        train,
        splits,
        root,
        patch_size=arch.patch_size,
        img_size=arch.img_size,
        teacher=make_teacher if teacher is not None else None,
    )


def build_model(
    arch: ArchSpec, train: TrainSpec, data: DataSpec, splits: Splits, root: str | Path
) -> nn.Module:
    """The model one trial measures: float32, eval mode, on CPU, a timm `VisionTransformer`.

    kind=vit: `arch.timm_name` or the composed dims, weights from `arch.checkpoint`, else trained
    standalone (cached under <root>/models/). kind=supernet: the supernet of (data, space, train)
    trained once (cached under <root>/supernets/), then the subnet of arch's dims extracted.
    A fresh module every call: token and precision surgery may modify it.
    """
    _check_geometry(arch, splits)
    if arch.kind == "supernet":
        net = _supernet_for(arch, train, data, splits, root)
        return net.extract(
            embed_dim=arch.embed_dim,
            depth=arch.depth,
            num_heads=arch.num_heads,
            mlp_ratio=arch.mlp_ratio,
        )
    if arch.kind != "vit":
        raise ConfigError(f"arch.kind={arch.kind!r}: valid: vit, supernet")
    model = make_vit(arch, splits)  # validates before any training starts
    if arch.checkpoint is not None:
        _load_weights(model, arch.checkpoint)
        return model.float().eval()

    def make() -> nn.Module:
        return make_vit(arch, splits)

    if train.epochs == 0:  # untrained on purpose (e.g. a speed-only baseline): seeded init
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(train.seed)
            return make().float().eval()
    path = model_path(arch, train, data, root)

    train_standalone(make, {"arch": plain(arch)}, train, splits, path)
    _load_weights(model, path)
    return model.float().eval()


# ------------------------------------------------------------------------- rebuilding (exports)


def weights_file(arch: ArchSpec, train: TrainSpec, data: DataSpec, root: str | Path) -> Path | None:
    """The cached file `build_model` reads the trial's weights from, None when it trains nothing
    (a given checkpoint, or `train.epochs=0`): an export refuses to train a model anew."""
    if arch.checkpoint is not None:
        return Path(arch.checkpoint)
    if arch.kind == "supernet":
        if arch.space is None:
            return None
        return supernet_path(
            arch.space, data, train, root, img_size=arch.img_size, patch_size=arch.patch_size
        )
    return None if train.epochs == 0 else model_path(arch, train, data, root)


def architecture(arch: ArchSpec, geometry: Geometry) -> dict[str, Any]:
    """Plain values that rebuild the float module tree `build_model` returns, without weights:
    the timm name, or the exact `ViTShape` (a subnet's comes from its supernet's space)."""
    out: dict[str, Any] = {
        "timm_name": None,
        "shape": None,
        "img_size": geometry.image_size,
        "patch_size": arch.patch_size,
        "in_chans": geometry.in_chans,
        "num_classes": geometry.num_classes,
    }
    if arch.kind == "supernet":
        space = load_supernet(arch.checkpoint).space if arch.checkpoint else arch.space
        if space is None:
            raise ConfigError("arch.space: required when arch.kind=supernet (e.g. arch=supernet)")
        shape = subnet_shape(
            space,
            embed_dim=arch.embed_dim,
            depth=arch.depth,
            num_heads=arch.num_heads,
            mlp_ratio=arch.mlp_ratio,
        )
        out["shape"] = plain(shape)
    elif arch.timm_name is not None:
        out["timm_name"] = arch.timm_name
    else:
        out["shape"] = plain(vit_shape(arch))
    return out


def skeleton(desc: dict[str, Any]) -> nn.Module:
    """The float model of `architecture(...)` with zeroed weights (float32, eval, CPU), ready
    for the same token and precision surgery as the trial's, then its saved state_dict."""
    geometry = Geometry(int(desc["img_size"]), int(desc["in_chans"]), int(desc["num_classes"]))
    if desc.get("timm_name"):
        arch = ArchSpec(
            timm_name=desc["timm_name"],
            img_size=geometry.image_size,
            patch_size=int(desc["patch_size"]),
        )
        model = make_vit(arch, geometry)
    else:
        s = desc["shape"]
        shape = ViTShape(
            embed_dim=int(s["embed_dim"]),
            depth=int(s["depth"]),
            num_heads=tuple(int(h) for h in s["num_heads"]),
            mlp_ratio=tuple(float(r) for r in s["mlp_ratio"]),
            head_dim=None if s.get("head_dim") is None else int(s["head_dim"]),
        )
        model = build_vit(
            shape,
            img_size=geometry.image_size,
            patch_size=int(desc["patch_size"]),
            in_chans=geometry.in_chans,
            num_classes=geometry.num_classes,
            device="meta",
            init=False,
        ).to_empty(device="cpu")
    with torch.no_grad():  # uninitialised memory may hold NaNs; surgery quantizes these weights
        for t in (*model.parameters(), *model.buffers()):
            t.zero_()
    return model.float().eval()
