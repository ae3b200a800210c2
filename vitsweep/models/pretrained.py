"""Supernets that start from published weights: AutoFormer's supernets, or any timm ViT.

Two kinds of file become a `Supernet` of the study's space here:
- an AutoFormer supernet (microsoft/Cream `supernet-{tiny,small,base}.pth`), converted key by key:
  its `qkv_super` stores q, k and v rows interleaved (a subnet takes rows `i::3`), so they are
  de-interleaved into timm's [q; k; v] layout, whose leading heads are then exactly the rows
  AutoFormer's subnet takes; its qkv bias is kept as stored and sliced as one leading run
  (`SpaceSpec.change_qkv`), as `qkv_super` slices it. Every other weight is sliced to the
  space's largest member as AutoFormer slices it (leading channels), so each subnet computes
  what AutoFormer's does.
- a timm ViT state dict (`arch.pretrained`), bootstrapped: it becomes the supernet's largest
  member unchanged, after its heads, MLP units and embedding channels are put in order of
  importance on the study's own images, so that every smaller subnet keeps the most useful
  ones (NNCF BootstrapNAS and ModelOpt FastNAS do the same with their importance measures).

The importance of a unit is the mean size of what it adds to the residual stream on a few
training batches: |h_j| * ||W_fc2[:, j]|| for an MLP unit, ||o_h W_proj[:, h]^T|| for a head,
|x_c| of the stream itself for an embedding channel. Weight magnitude alone (the data-free
choice) ignores how large a unit's activations are on the user's images; a first-order Taylor
score needs labels and gradients for the same answer on a pretrained model. Permuting units
is an exact symmetry of the network, so the largest subnet still equals the pretrained model
(up to float summation order).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vitsweep.models.checkpoint import CheckpointError, load_state, one_line
from vitsweep.models.spaces import largest
from vitsweep.models.supernet import Supernet
from vitsweep.spec import SpaceSpec

AUTOFORMER_HEAD_DIM = 64  # AutoFormer's subnets take `num_heads * 64` qkv rows (change_qkv)


def load_any(path: str | Path, key: str) -> Any:
    """What `path` holds, tensors and plain data only (AutoFormer saves its argparse Namespace
    beside the weights: allowed as data, never as code); one line naming `key` on failure."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{key}={str(path)!r}: no such file")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{key}={str(path)!r}: unreadable ({one_line(e)})") from None


def state_of(
    obj: Any, path: str | Path, key: str
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The state dict in a loaded file (bare, or under "model"/"state_dict", DDP's "module."
    prefix dropped) and the training arguments saved beside it."""
    args: dict[str, Any] = {}
    if isinstance(obj, dict):
        raw = obj.get("args")
        args = vars(raw) if isinstance(raw, argparse.Namespace) else {}
        for inner in ("model", "state_dict"):
            if isinstance(obj.get(inner), dict):
                obj = obj[inner]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{key}={str(path)!r}: holds no state dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}, args


def read_state(path: str | Path, key: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """`state_of` the file at `path`."""
    return state_of(load_any(path, key), path, key)


def is_autoformer(state: dict[str, torch.Tensor]) -> bool:
    return "patch_embed_super.proj.weight" in state


def _renamed(name: str) -> str:
    """AutoFormer's key -> our timm key."""
    swaps = (
        ("patch_embed_super.", "patch_embed."),
        (".attn_layer_norm.", ".norm1."),
        (".ffn_layer_norm.", ".norm2."),
        (".fc1.", ".mlp.fc1."),
        (".fc2.", ".mlp.fc2."),
        (".attn.rel_pos_embed_k.embeddings_table_", ".attn.rel_k.table_"),
        (".attn.rel_pos_embed_v.embeddings_table_", ".attn.rel_v.table_"),
    )
    for old, new in swaps:
        name = name.replace(old, new)
    return name


def _deinterleave(t: torch.Tensor) -> torch.Tensor:
    """`qkv_super` rows (q0 k0 v0 q1 k1 v1 ...) -> timm's [q; k; v]."""
    return torch.cat([t[i::3] for i in range(3)])


def _check_args(args: dict[str, Any], space: SpaceSpec, key: str, path: Path) -> None:
    """The training flags AutoFormer saved must match the space's block options."""
    if not args:
        return
    want = {
        "change_qkv": True,
        "relative_position": space.rel_pos > 0,
        "gp": space.global_pool == "avg",
        "no_abs_pos": False,
    }
    for flag, value in want.items():
        if flag in args and bool(args[flag]) != value:
            raise CheckpointError(
                f"{key}={str(path)!r}: trained with --{flag}={args[flag]}, but arch.space "
                f"needs {value} (rel_pos={space.rel_pos}, global_pool={space.global_pool}); "
                "use the matching arch=autoformer_* or set arch.space.rel_pos/global_pool"
            )
    if space.rel_pos and args.get("max_relative_position", space.rel_pos) != space.rel_pos:
        raise CheckpointError(
            f"{key}={str(path)!r}: max_relative_position={args['max_relative_position']}; "
            f"set arch.space.rel_pos={args['max_relative_position']}"
        )


def from_autoformer(
    state: dict[str, torch.Tensor],
    args: dict[str, Any],
    space: SpaceSpec,
    *,
    img_size: int,
    patch_size: int,
    in_chans: int,
    num_classes: int,
    path: str | Path,
    key: str = "arch.checkpoint",
) -> Supernet:
    """The supernet of `space` holding an AutoFormer supernet's weights (see the module doc)."""
    path = Path(path)
    if not space.change_qkv:
        raise CheckpointError(
            f"{key}={str(path)!r}: AutoFormer's supernets need arch.space.change_qkv=true "
            "(use arch=autoformer_tiny/small/base)"
        )
    if space.head_dim != AUTOFORMER_HEAD_DIM:
        raise CheckpointError(
            f"{key}={str(path)!r}: AutoFormer's heads are {AUTOFORMER_HEAD_DIM} wide; "
            f"arch.space.head_dim={space.head_dim}"
        )
    _check_args(args, space, key, path)
    has_rel = any(".rel_pos_embed_k." in k for k in state)
    if has_rel != (space.rel_pos > 0):
        raise CheckpointError(
            f"{key}={str(path)!r}: {'has' if has_rel else 'has no'} relative position tables "
            f"but arch.space.rel_pos={space.rel_pos}; use arch=autoformer_tiny/small/base"
        )
    net = Supernet(
        space,
        img_size=img_size,
        patch_size=patch_size,
        in_chans=in_chans,
        num_classes=num_classes,
        init=True,  # a replaced head keeps its fresh init; every other tensor is overwritten
    )
    converted: dict[str, torch.Tensor] = {}
    for name, t in state.items():
        new = _renamed(name)
        if new.endswith("attn.qkv.weight"):  # its bias is sliced as one run (change_qkv)
            t = _deinterleave(t)
        converted[new] = t
    _fill(net, converted, key, path)
    return net


# Dims a subnet never slices: a size other than ours means another geometry, not a wider net.
_FIXED: dict[str, tuple[int, ...]] = {
    "pos_embed": (0, 1),
    "cls_token": (0, 1),
    "patch_embed.proj.weight": (1, 2, 3),
    "table_v": (0,),
    "table_h": (0,),
}


def _fill(net: Supernet, state: dict[str, torch.Tensor], key: str, path: Path) -> None:
    """Copy the leading slice of every source tensor into the supernet (q, k, v each sliced
    apart); a missing or too small tensor is an error, a head of another width is replaced."""
    own = net.vit.state_dict()
    missing = sorted(set(own) - set(state))
    depth = max(net.space.depth)
    extra_blocks = {k for k in state if k.startswith("blocks.") and int(k.split(".")[1]) >= depth}
    unknown = sorted(set(state) - set(own) - extra_blocks)
    if missing or unknown:
        raise CheckpointError(
            f"{key}={str(path)!r}: keys do not match the space's ViT (missing: "
            f"{missing[:3]}, unexpected: {unknown[:3]}); is arch.space the checkpoint's?"
        )
    replaced = _replace_head(net.num_classes, state, key, path)
    with torch.no_grad():
        for name, dst in own.items():
            if name in replaced:
                continue
            src = state[name]
            if name.endswith("attn.qkv.weight") or (
                name.endswith("attn.qkv.bias") and not net.space.change_qkv
            ):
                src = src.reshape(3, src.shape[0] // 3, *src.shape[1:])
                want = (3, dst.shape[0] // 3, *dst.shape[1:])
            else:
                want = tuple(dst.shape)
            fixed = _FIXED.get(name.rsplit(".", 1)[-1] if "table_" in name else name, ())
            if (
                src.dim() != len(want)
                or any(s < w for s, w in zip(src.shape, want, strict=True))
                or any(src.shape[d] != want[d] for d in fixed)
            ):
                raise CheckpointError(
                    f"{key}={str(path)!r}: {name} is {list(src.shape)}, where the space's "
                    f"largest member at this img_size/patch_size needs {list(want)}; pick the "
                    "matching arch (autoformer_tiny/small/base) and data.image_size"
                )
            part = src[tuple(slice(0, n) for n in want)]
            dst.copy_(part.reshape(dst.shape))


def _replace_head(
    num_classes: int, state: dict[str, torch.Tensor], key: str, path: Path
) -> set[str]:
    """The head's names to leave at their fresh init when the checkpoint has another class
    count (the run says so in one line)."""
    found = state.get("head.weight")
    if found is None or found.shape[0] == num_classes:
        return set()
    print(
        f"vitsweep: {key}={path.name}: its head has {found.shape[0]} classes; replaced by a new "
        f"head for the data's {num_classes}",
        file=sys.stderr,
    )
    return {"head.weight", "head.bias"}


def load_pretrained_vit(model: nn.Module, path: str | Path, key: str = "arch.pretrained") -> None:
    """A timm ViT's weights into `model` (same architecture), its head kept fresh when the
    checkpoint has another class count."""
    path = Path(path)
    state, _ = read_state(path, key)
    fresh = _replace_head(model.num_classes, state, key, path)
    state = {k: v for k, v in state.items() if k not in fresh}
    if fresh:
        state.update({k: model.state_dict()[k] for k in fresh})
    load_state(model, state, path)


# -- bootstrapping any timm ViT -----------------------------------------------------------------


def bootstrap(
    state: dict[str, torch.Tensor],
    space: SpaceSpec,
    *,
    img_size: int,
    patch_size: int,
    in_chans: int,
    num_classes: int,
    path: str | Path,
    batches: Iterable[torch.Tensor] | None,
    key: str = "arch.pretrained",
) -> Supernet:
    """The supernet of `space` whose largest member is the timm ViT in `state`, units ordered
    by importance on `batches` (None: kept in the checkpoint's order)."""
    path = Path(path)
    net = Supernet(
        space,
        img_size=img_size,
        patch_size=patch_size,
        in_chans=in_chans,
        num_classes=num_classes,
    )
    big = largest(space)
    own = net.vit.state_dict()
    head = {"head.weight", "head.bias"}
    wrong = sorted((set(own) ^ set(state)) - head) or [
        f"{k} is {list(state[k].shape)}, needs {list(v.shape)}"
        for k, v in own.items()
        if k not in head and state[k].shape != v.shape
    ]
    if wrong or state.get("head.weight", own["head.weight"]).shape[1] != big.embed_dim:
        raise CheckpointError(
            f"{key}={str(path)!r}: not a timm ViT of the space's largest member (embed "
            f"{big.embed_dim}, depth {big.depth}, {big.num_heads[0]} heads of {big.head_dim}, "
            f"MLP ratio {big.mlp_ratio[0]}): {(wrong or ['head width'])[0]}; set arch.space "
            "so that its largest choices are the pretrained model's"
        )
    replaced = _replace_head(net.num_classes, state, key, path)
    with torch.no_grad():
        for name, dst in own.items():
            if name not in replaced:
                dst.copy_(state[name])
    if batches is not None:
        reorder(net.vit, batches)
    return net


@torch.no_grad()
def importance(vit: nn.Module, batches: Iterable[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Mean contribution to the residual stream per embedding channel ("embed"), per head
    ("blocks.i.heads") and per MLP unit ("blocks.i.mlp") of a timm ViT, over `batches`."""
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def add(name: str, value: torch.Tensor, n: int) -> None:
        sums[name] = sums.get(name, 0) + value.double()
        counts[name] = counts.get(name, 0) + n

    hooks = []
    for i, blk in enumerate(vit.blocks):

        def stream(_m: nn.Module, inp: tuple[torch.Tensor, ...]) -> None:
            x = inp[0]
            add("embed", x.abs().sum(dim=(0, 1)), x.shape[0] * x.shape[1])

        def mlp(_m: nn.Module, inp: tuple[torch.Tensor, ...], i: int = i) -> None:
            h, w = inp[0], vit.blocks[i].mlp.fc2.weight
            add(f"blocks.{i}.mlp", h.abs().sum(dim=(0, 1)) * w.norm(dim=0), h.shape[0] * h.shape[1])

        def heads(_m: nn.Module, inp: tuple[torch.Tensor, ...], i: int = i) -> None:
            attn = vit.blocks[i].attn
            o = inp[0].unflatten(-1, (attn.num_heads, attn.head_dim))  # [B, N, H, D]
            w = attn.proj.weight.unflatten(1, (attn.num_heads, attn.head_dim))  # [E, H, D]
            out = torch.einsum("bnhd,ehd->bnhe", o, w)
            add(f"blocks.{i}.heads", out.norm(dim=-1).sum(dim=(0, 1)), o.shape[0] * o.shape[1])

        hooks += [
            blk.register_forward_pre_hook(stream),
            blk.mlp.fc2.register_forward_pre_hook(mlp),
            blk.attn.proj.register_forward_pre_hook(heads),
        ]
    was = vit.training
    vit.eval()
    try:
        for x in batches:
            vit(x)
    finally:
        for h in hooks:
            h.remove()
        vit.train(was)
    return {k: (v / counts[k]).float() for k, v in sums.items()}


@torch.no_grad()
def reorder(vit: nn.Module, batches: Iterable[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Permute `vit`'s heads, MLP units and embedding channels, most important first, in
    place; returns the permutations applied (new position -> old index)."""
    scores = importance(vit, batches)
    orders = {k: torch.argsort(v, descending=True, stable=True) for k, v in scores.items()}
    for i, blk in enumerate(vit.blocks):
        _permute_heads(blk.attn, orders[f"blocks.{i}.heads"])
        p = orders[f"blocks.{i}.mlp"]
        blk.mlp.fc1.weight.copy_(blk.mlp.fc1.weight[p])
        blk.mlp.fc1.bias.copy_(blk.mlp.fc1.bias[p])
        blk.mlp.fc2.weight.copy_(blk.mlp.fc2.weight[:, p])
    _permute_embed(vit, orders["embed"])
    return orders


def _permute_heads(attn: nn.Module, order: torch.Tensor) -> None:
    h, d = attn.num_heads, attn.head_dim
    rows = (order[:, None] * d + torch.arange(d)).reshape(-1)  # one head's rows, in order
    qkv_rows = torch.cat([rows + j * h * d for j in range(3)])
    attn.qkv.weight.copy_(attn.qkv.weight[qkv_rows])
    if attn.qkv.bias is not None:
        attn.qkv.bias.copy_(attn.qkv.bias[qkv_rows])
    attn.proj.weight.copy_(attn.proj.weight[:, rows])


def _permute_embed(vit: nn.Module, p: torch.Tensor) -> None:
    """The residual stream's channels: every tensor that writes it (rows) or reads it (columns);
    LayerNorm is equivariant to a permutation of its channels."""
    embed = vit.patch_embed.proj
    writes = [embed.weight, embed.bias, vit.norm.weight, vit.norm.bias]
    for blk in vit.blocks:
        writes += [blk.norm1.weight, blk.norm1.bias, blk.norm2.weight, blk.norm2.bias]
        writes += [blk.attn.proj.weight, blk.attn.proj.bias, blk.mlp.fc2.weight, blk.mlp.fc2.bias]
    for t in writes:
        t.copy_(t[p])
    for t in (vit.cls_token, vit.pos_embed):
        t.copy_(t[..., p])
    reads = [vit.head.weight]
    for blk in vit.blocks:
        reads += [blk.attn.qkv.weight, blk.mlp.fc1.weight]
    for t in reads:
        t.copy_(t[:, p])
