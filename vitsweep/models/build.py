"""`build_model`: the model a trial measures, from an `ArchSpec` (trained or loaded as needed)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import partial
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
    checked,
    file_sha256,
    load_state,
    one_line,
    plain,
    readable,
)
from vitsweep.models.pretrained import (
    bootstrap,
    from_autoformer,
    is_autoformer,
    load_any,
    load_pretrained_vit,
    read_state,
    state_of,
)
from vitsweep.models.spaces import arch_shape
from vitsweep.models.supernet import Supernet
from vitsweep.models.train import (
    arch_key,
    standalone_key,
    supernet_path,
    train_standalone,
    train_supernet,
)
from vitsweep.models.vit import TIMM_NORM_EPS, ViTShape, build_vit
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


def _weights_in(obj: Any) -> Any:
    """The state dict of a file of ours (`{"state_dict": ...}`) or a bare/`{"model": ...}` one."""
    return obj.get("state_dict", obj.get("model", obj)) if isinstance(obj, dict) else obj


def _load_weights(model: nn.Module, path: str | Path) -> None:
    """Weights from `arch.checkpoint` (a file of ours, or a bare/`{"model": ...}` state dict)."""
    path = Path(path)
    load_state(model, _weights_in(readable(path, key="arch.checkpoint")), path)


def check_checkpoint_fits(arch: ArchSpec, obj: Any, path: str | Path) -> None:
    """At launch: a kind=vit `arch.checkpoint` (already read: `obj`) loads into the model `arch`
    builds, checked for names and shapes on the meta device (nothing allocated, 0.05 s), so that
    a file of another architecture is one line before the study starts, not a failed trial each
    (11 s apiece, until the failure rate stops it). Channels and classes are the file's own: the
    data is not read here, and a head of the wrong class count still fails in the trial."""
    state = _weights_in(obj)
    sizes = state if isinstance(state, dict) else {}  # not a dict: load_state says so below
    patch, head = sizes.get("patch_embed.proj.weight"), sizes.get("head.weight")
    geometry = Geometry(
        arch.img_size,
        int(patch.shape[1]) if isinstance(patch, torch.Tensor) and patch.dim() == 4 else 3,
        int(head.shape[0]) if isinstance(head, torch.Tensor) and head.dim() == 2 else 1000,
    )
    with torch.device("meta"):
        model = make_vit(arch, geometry)
    load_state(model, state, path, assign=True)


def model_path(arch: ArchSpec, train: TrainSpec, data: DataSpec, root: str | Path) -> Path:
    """<root>/models/<key>.pt, key = hash of data (and its renderer) + arch (a pretrained
    start by its content) + training."""
    key_arch = arch_key(arch)
    key_arch.pop("checkpoint", None)
    key_arch.pop("space", None)
    if arch.pretrained is not None:
        key_arch["pretrained"] = pretrained_sha256(arch.pretrained)
    key = cache_key(
        kind="model",
        data=data,
        generator=generator_version(data),
        arch=key_arch,
        train=standalone_key(train),
    )
    return Path(root) / "models" / f"{key}.pt"


_SHA256: dict[tuple[str, int], str] = {}


def pretrained_sha256(path: str | Path) -> str:
    """The content hash of a pretrained file (memoised by mtime: ImageNet ViTs are 0.3 GB);
    a missing file is the one-line error that names arch.pretrained."""
    path = Path(path).resolve()
    if not path.is_file():
        raise CheckpointError(f"arch.pretrained={str(path)!r}: no such file")
    memo = (str(path), path.stat().st_mtime_ns)
    if memo not in _SHA256:
        _SHA256[memo] = file_sha256(path)
    return _SHA256[memo]


def start_key(arch: ArchSpec) -> dict[str, Any] | None:
    """What a fine-tuned supernet starts from, for its cache key (None: from scratch)."""
    if arch.pretrained is None:
        return None
    return {"pretrained": pretrained_sha256(arch.pretrained), "reorder": arch.reorder}


def importance_batches(splits: Splits, seed: int, n: int = 4, size: int = 64) -> list[torch.Tensor]:
    """The images a bootstrap ranks units on: `n` seeded batches of the train split."""
    gen = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(splits.train, batch_size=size, shuffle=True, generator=gen)
    out = []
    for x, _ in loader:
        out.append(x)
        if len(out) == n:
            break
    return out


def start_supernet(arch: ArchSpec, splits: Splits, seed: int) -> Supernet:
    """The supernet `arch.pretrained` gives before fine-tuning: an AutoFormer supernet
    converted, or a timm ViT bootstrapped (units reordered when `arch.reorder`)."""
    assert arch.pretrained is not None and arch.space is not None
    state, args = read_state(arch.pretrained, "arch.pretrained")
    geometry = dict(
        img_size=splits.image_size,
        patch_size=arch.patch_size,
        in_chans=splits.in_chans,
        num_classes=splits.num_classes,
        path=arch.pretrained,
        key="arch.pretrained",
    )
    with torch.random.fork_rng(devices=[]):  # a replaced head's init
        torch.manual_seed(seed)
        if is_autoformer(state):
            return from_autoformer(state, args, arch.space, **geometry)
        batches = importance_batches(splits, seed) if arch.reorder else None
        return bootstrap(state, arch.space, batches=batches, **geometry)


# Supernets from `arch.checkpoint` by (file, mtime, space): read and converted once per process.
_CHECKPOINTS: dict[tuple[str, int, str], Supernet] = {}


def checkpoint_supernet(arch: ArchSpec, splits: Splits) -> Supernet:
    """`arch.checkpoint` as a supernet of `arch.space`: a vitsweep supernet file, or one of
    AutoFormer's published supernets, converted exactly (see `models.pretrained`)."""
    assert arch.checkpoint is not None and arch.space is not None
    path = Path(arch.checkpoint).resolve()
    memo = (str(path), path.stat().st_mtime_ns if path.exists() else 0, repr(arch.space))
    if memo not in _CHECKPOINTS:
        obj = load_any(path, "arch.checkpoint")
        if isinstance(obj, dict) and obj.get("kind") == "supernet":  # read once, not twice
            _CHECKPOINTS[memo] = Supernet.from_saved(checked(obj, path, "supernet"), path)
            return _CHECKPOINTS[memo]
        state, args = state_of(obj, path, "arch.checkpoint")
        if not is_autoformer(state):
            raise CheckpointError(
                f"arch.checkpoint={str(path)!r}: neither a vitsweep nor an AutoFormer "
                "supernet; a timm ViT to build the supernet from goes in arch.pretrained"
            )
        with torch.random.fork_rng(devices=[]):  # a replaced head's init
            torch.manual_seed(0)
            net = from_autoformer(
                state,
                args,
                arch.space,
                img_size=splits.image_size,
                patch_size=arch.patch_size,
                in_chans=splits.in_chans,
                num_classes=splits.num_classes,
                path=path,
            )
        _CHECKPOINTS[memo] = net.eval()
    return _CHECKPOINTS[memo]


def _supernet_for(
    arch: ArchSpec, train: TrainSpec, data: DataSpec, splits: Splits, root: str | Path
) -> Supernet:
    if arch.checkpoint is not None:
        _check_space(arch)
        net = checkpoint_supernet(arch, splits)
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
        start=partial(start_supernet, arch, splits, train.seed) if arch.pretrained else None,
        start_key=start_key(arch),
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

        def subnet() -> nn.Module:
            return net.extract(
                embed_dim=arch.embed_dim,
                depth=arch.depth,
                num_heads=arch.num_heads,
                mlp_ratio=arch.mlp_ratio,
            )

        if not arch.finetune:
            return subnet()
        path = finetuned_path(arch, train, data, root)
        train_standalone(subnet, {"arch": arch_key(arch)}, train, splits, path)
        model = subnet()
        _load_weights(model, path)
        return model.float().eval()
    if arch.kind != "vit":
        raise ConfigError(f"arch.kind={arch.kind!r}: valid: vit, supernet")
    model = make_vit(arch, splits)  # validates before any training starts
    if arch.checkpoint is not None:
        _load_weights(model, arch.checkpoint)
        return model.float().eval()

    def make() -> nn.Module:
        fresh = make_vit(arch, splits)
        if arch.pretrained is not None:  # fine-tuned from it; a head of other width replaced
            load_pretrained_vit(fresh, arch.pretrained)
        return fresh

    if train.epochs == 0:  # untrained on purpose (e.g. a speed-only baseline): seeded init
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(train.seed)
            return make().float().eval()
    path = model_path(arch, train, data, root)

    train_standalone(make, {"arch": plain(arch)}, train, splits, path)
    _load_weights(model, path)
    return model.float().eval()


# ------------------------------------------------------------------------- rebuilding (exports)


def finetuned_path(arch: ArchSpec, train: TrainSpec, data: DataSpec, root: str | Path) -> Path:
    """<root>/models/<key>.pt of a subnet trained alone from its inherited weights: key = the
    supernet it came from (its cache key, or its file's content) + its dims + training."""
    source = weights_file(dataclasses.replace(arch, finetune=False), train, data, root)
    assert source is not None
    inherited = source.stem if arch.checkpoint is None else pretrained_sha256(source)
    dims = arch_key(arch)
    for k in ("checkpoint", "pretrained", "reorder", "space"):
        dims.pop(k, None)
    key = cache_key(
        kind="finetuned",
        data=data,
        inherited=inherited,
        arch=dims,
        train=standalone_key(train),
    )
    return Path(root) / "models" / f"{key}.pt"


def weights_file(arch: ArchSpec, train: TrainSpec, data: DataSpec, root: str | Path) -> Path | None:
    """The cached file `build_model` reads the trial's weights from, None when it trains nothing
    (`train.epochs=0`); a given checkpoint or pretrained file itself when it is used as is. An
    export refuses to train a model anew."""
    if arch.kind == "supernet" and arch.finetune and arch.space is not None:
        return finetuned_path(arch, train, data, root)
    if arch.checkpoint is not None:
        return Path(arch.checkpoint)
    if arch.kind == "supernet":
        if arch.space is None:
            return None
        return supernet_path(
            arch.space,
            data,
            train,
            root,
            img_size=arch.img_size,
            patch_size=arch.patch_size,
            start=start_key(arch),
        )
    if train.epochs == 0:
        return None if arch.pretrained is None else Path(arch.pretrained)
    return model_path(arch, train, data, root)


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
        out["shape"] = plain(arch_shape(space, arch))
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
            rel_pos=int(s.get("rel_pos", 0)),
            global_pool=str(s.get("global_pool", "token")),
            norm_eps=float(s.get("norm_eps", TIMM_NORM_EPS)),
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
