"""Published starting points: AutoFormer's supernet files, timm ViTs bootstrapped into supernets,
and fine-tuning either on the study's data.

The AutoFormer oracle below is written from the paper's and the published code's definitions
(weight entanglement by leading slices, `qkv_super`'s interleaved rows and one-run bias, 2-D
relative positions with the class token at row 0, mean pooling after the final norm), with
explicit loops where our code vectorises; the checkpoint is built in AutoFormer's key layout.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import Subset

from vitsweep import data
from vitsweep.models import Supernet, build_model, build_vit
from vitsweep.models.build import checkpoint_supernet, weights_file
from vitsweep.models.checkpoint import CheckpointError
from vitsweep.models.pretrained import bootstrap, importance, read_state
from vitsweep.models.vit import ViTShape
from vitsweep.spec import ArchSpec, ConfigError, DataSpec, SpaceSpec, TrainSpec
from vitsweep.tome.patch import apply_tome

pytestmark = pytest.mark.usefixtures("one_thread")

DATA = DataSpec(image_size=16)  # scikit-learn digits at 16 px: 16 patches of 4 px
HD = 64  # AutoFormer's head width
SUPER = dict(embed=80, depth=3, heads=2, ratio=4.0, classes=10)  # wider than the space
AF_SPACE = SpaceSpec(embed_dim=(48, 64), depth=(2, 3), mlp_ratio=(2.0, 3.0), num_heads=(1, 2),
                     head_dim=HD, rel_pos=2, global_pool="avg", norm_eps=1e-5,
                     change_qkv=True)  # fmt: skip


def autoformer_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """A supernet in AutoFormer's key layout and widths, every tensor random."""
    g = torch.Generator().manual_seed(seed)
    e, a, hid, c = SUPER["embed"], SUPER["heads"] * HD, int(SUPER["ratio"] * SUPER["embed"]), 3

    def r(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * 0.3

    sd = {
        "cls_token": r(1, 1, e),
        "pos_embed": r(1, 17, e),
        "patch_embed_super.proj.weight": r(e, c, 4, 4),
        "patch_embed_super.proj.bias": r(e),
        "norm.weight": 1 + r(e),
        "norm.bias": r(e),
        "head.weight": r(SUPER["classes"], e),
        "head.bias": r(SUPER["classes"]),
    }
    for i in range(SUPER["depth"]):
        p = f"blocks.{i}."
        sd |= {
            p + "attn_layer_norm.weight": 1 + r(e),
            p + "attn_layer_norm.bias": r(e),
            p + "ffn_layer_norm.weight": 1 + r(e),
            p + "ffn_layer_norm.bias": r(e),
            p + "attn.qkv.weight": r(3 * a, e),
            p + "attn.qkv.bias": r(3 * a),
            p + "attn.proj.weight": r(e, a),
            p + "attn.proj.bias": r(e),
            p + "fc1.weight": r(hid, e),
            p + "fc1.bias": r(hid),
            p + "fc2.weight": r(e, hid),
            p + "fc2.bias": r(e),
        }
        for kv in "kv":
            for axis in "vh":
                sd[f"{p}attn.rel_pos_embed_{kv}.embeddings_table_{axis}"] = r(2 * 2 + 2, HD)
    return sd


def autoformer_logits(sd, x, embed, depth, heads, ratios, max_rel=2) -> torch.Tensor:
    """AutoFormer's forward for one sampled config, from its state dict (the oracle)."""
    e = embed
    t = F.conv2d(x, sd["patch_embed_super.proj.weight"][:e], sd["patch_embed_super.proj.bias"][:e],
                 stride=4).flatten(2).transpose(1, 2)  # fmt: skip
    cls = sd["cls_token"][..., :e].expand(len(x), -1, -1)
    t = torch.cat([cls, t], 1) + sd["pos_embed"][..., :e]
    n = t.shape[1]
    side = math.isqrt(n - 1)
    idx = torch.zeros(2, n, n, dtype=torch.long)  # [vertical, horizontal] table rows per pair
    for qi in range(1, n):
        for ki in range(1, n):
            for axis, (a, b) in enumerate(
                [((ki - 1) // side, (qi - 1) // side), ((ki - 1) % side, (qi - 1) % side)]
            ):
                idx[axis, qi, ki] = max(-max_rel, min(max_rel, a - b)) + max_rel + 1

    def ln(z, name):
        return F.layer_norm(z, (e,), sd[name + ".weight"][:e], sd[name + ".bias"][:e], eps=1e-5)

    for i in range(depth):
        p, h = f"blocks.{i}.", heads[i]
        a, hid = h * HD, int(e * ratios[i])
        w = sd[p + "attn.qkv.weight"][:, :e]
        w = torch.cat([w[j : 3 * a : 3] for j in range(3)])  # qkv_super's sample_weight
        q, k, v = F.linear(ln(t, p + "attn_layer_norm"), w, sd[p + "attn.qkv.bias"][: 3 * a]) \
            .reshape(len(x), n, 3, h, HD).permute(2, 0, 3, 1, 4)  # fmt: skip

        def rel(kind, p=p):
            tv = sd[f"{p}attn.rel_pos_embed_{kind}.embeddings_table_v"][:, :HD]
            th = sd[f"{p}attn.rel_pos_embed_{kind}.embeddings_table_h"][:, :HD]
            return tv[idx[0]] + th[idx[1]]  # [n, n, HD]

        logits = (q @ k.transpose(-2, -1) + torch.einsum("bhqd,qkd->bhqk", q, rel("k"))) * HD**-0.5
        att = logits.softmax(-1)
        o = att @ v + torch.einsum("bhqk,qkd->bhqd", att, rel("v"))
        o = o.transpose(1, 2).reshape(len(x), n, a)
        t = t + F.linear(o, sd[p + "attn.proj.weight"][:e, :a], sd[p + "attn.proj.bias"][:e])
        y = F.gelu(F.linear(ln(t, p + "ffn_layer_norm"), sd[p + "fc1.weight"][:hid, :e],
                            sd[p + "fc1.bias"][:hid]))  # fmt: skip
        t = t + F.linear(y, sd[p + "fc2.weight"][:e, :hid], sd[p + "fc2.bias"][:e])
    pooled = ln(t, "norm")[:, 1:].mean(1)
    return F.linear(pooled, sd["head.weight"][:, :e], sd["head.bias"])


@pytest.fixture(scope="module")
def splits() -> data.Splits:
    full = data.load(DATA)
    return dataclasses.replace(full, train=Subset(full.train, range(128)))


@pytest.fixture
def autoformer_file(tmp_path: Path) -> Path:
    path = tmp_path / "supernet-x.pth"
    args = argparse.Namespace(gp=True, relative_position=True, change_qkv=True,
                              max_relative_position=2, no_abs_pos=False)  # fmt: skip
    torch.save({"model": autoformer_state(), "epoch": 499, "args": args}, path)
    return path


def af_arch(path: Path, **dims) -> ArchSpec:
    dims = {"embed_dim": 64, "depth": 3, "num_heads": 2, "mlp_ratio": 3.0, **dims}
    return ArchSpec(kind="supernet", img_size=16, patch_size=4, space=AF_SPACE,
                    checkpoint=str(path), head_dim=HD, **dims)  # fmt: skip


CONFIGS = [
    dict(embed_dim=64, depth=3, num_heads=(2, 2, 2), mlp_ratio=(3.0, 3.0, 3.0)),
    dict(embed_dim=48, depth=2, num_heads=(1, 1), mlp_ratio=(2.0, 2.0)),
    dict(embed_dim=48, depth=3, num_heads=(2, 1, 2), mlp_ratio=(3.0, 2.0, 2.0)),
    dict(embed_dim=64, depth=2, num_heads=(1, 2), mlp_ratio=(2.0, 3.0)),
    dict(embed_dim=64, depth=3, num_heads=(1, 2, 1), mlp_ratio=(3.0, 3.0, 2.0)),
]


def test_an_autoformer_supernet_file_runs_every_subnet_as_autoformer_does(
    autoformer_file, splits
) -> None:
    sd, args = read_state(autoformer_file, "arch.checkpoint")
    assert args["change_qkv"] is True  # the saved argparse Namespace is read as data
    x = torch.stack([splits.val[i][0] for i in range(4)])
    for dims in CONFIGS:
        model = build_model(af_arch(autoformer_file, **dims), TrainSpec(), DATA, splits, "/x")
        with torch.no_grad():
            got = model(x)
        want = autoformer_logits(sd, x, dims["embed_dim"], dims["depth"], dims["num_heads"],
                                 dims["mlp_ratio"])  # fmt: skip
        assert want.abs().max() > 1.0  # logits large enough that a wrong slice shows
        assert (got - want).abs().max() <= 1e-5, dims
    # the conversion is memoised per process, and saves and loads as one of ours (block options
    # included), which is how a fine-tuned one is cached
    arch = af_arch(autoformer_file)
    net = checkpoint_supernet(arch, splits)
    assert checkpoint_supernet(arch, splits) is net
    again = Supernet.load(net.save(autoformer_file.with_name("ours.pt")))
    assert again.space == AF_SPACE
    with torch.no_grad():
        assert torch.equal(again(x, shape=again.smallest), net(x, shape=net.smallest))


def test_autoformer_files_that_do_not_fit_the_space_fail_in_one_line(
    autoformer_file, splits
) -> None:
    cases = [
        (dataclasses.replace(AF_SPACE, rel_pos=0), r"--relative_position=True, but arch\.space"),
        (dataclasses.replace(AF_SPACE, rel_pos=3), r"max_relative_position=2; set arch\.space"),
        (dataclasses.replace(AF_SPACE, change_qkv=False), r"need arch\.space\.change_qkv=true"),
        (
            dataclasses.replace(AF_SPACE, embed_dim=(64, 96)),
            r"cls_token is \[1, 1, 80\], .* needs \[1, 1, 96\]",
        ),
    ]
    for space, message in cases:
        arch = dataclasses.replace(af_arch(autoformer_file), space=space)
        with pytest.raises(CheckpointError, match=message) as err:
            build_model(arch, TrainSpec(), DATA, splits, "/x")
        assert "\n" not in str(err.value) and "supernet-x.pth" in str(err.value)


def timm_vit(classes: int = 10, seed: int = 0) -> torch.nn.Module:
    """A 'pretrained' timm ViT: random weights pushed off their init so units differ."""
    torch.manual_seed(seed)
    vit = build_vit(ViTShape.of(64, 3, 4, 4.0, 16), img_size=16, patch_size=4, in_chans=3,
                    num_classes=classes)  # fmt: skip
    with torch.no_grad():
        for p in vit.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return vit.eval()


BOOT_SPACE = SpaceSpec(embed_dim=(32, 48, 64), depth=(2, 3), mlp_ratio=(2.0, 4.0),
                       num_heads=(2, 4), head_dim=16)  # fmt: skip


def test_a_bootstrapped_supernets_largest_member_is_the_pretrained_vit(splits) -> None:
    vit = timm_vit()
    x = torch.stack([splits.val[i][0] for i in range(8)])
    batches = [torch.stack([splits.train[i][0] for i in range(j, j + 32)]) for j in (0, 32)]
    geometry = dict(img_size=16, patch_size=4, in_chans=3, num_classes=10, path="vit.pt")
    plain = bootstrap(vit.state_dict(), BOOT_SPACE, batches=None, **geometry).eval()
    ordered = bootstrap(vit.state_dict(), BOOT_SPACE, batches=batches, **geometry).eval()
    with torch.no_grad():
        want = vit(x)
        assert torch.equal(plain(x), want)
        torch.testing.assert_close(ordered(x), want, atol=1e-5, rtol=1e-5)  # summation order
    # most important first, by the same measure recomputed on the reordered net
    scores = importance(ordered.vit, batches)
    units = {f"blocks.{i}.{u}" for i in range(3) for u in ("heads", "mlp")}
    assert set(scores) == {"embed"} | units
    for name, s in scores.items():
        assert torch.all(s[:-1] >= s[1:] * (1 - 1e-4)), name
    # and the order changed something: the smallest subnets differ
    small = dict(embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0)
    with torch.no_grad():
        assert not torch.allclose(plain(x, **small), ordered(x, **small))


def test_bootstrap_refuses_a_vit_that_is_not_the_spaces_largest_member(tmp_path, splits) -> None:
    path = tmp_path / "vit.pt"
    torch.save({"model": timm_vit().state_dict()}, path)
    narrow = dataclasses.replace(BOOT_SPACE, embed_dim=(32, 48))
    arch = ArchSpec(kind="supernet", img_size=16, patch_size=4, embed_dim=32, depth=2,
                    num_heads=2, mlp_ratio=2.0, head_dim=16, space=narrow,
                    pretrained=str(path))  # fmt: skip
    with pytest.raises(CheckpointError, match=r"arch\.pretrained=.*vit\.pt.*embed 48") as err:
        build_model(arch, TrainSpec(epochs=1, progress=False), DATA, splits, str(tmp_path))
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match=r"arch\.pretrained=.*set one of arch\.checkpoint"):
        dataclasses.replace(arch, checkpoint=str(path))


def test_a_pretrained_vit_is_bootstrapped_then_fine_tuned_once_and_cached(
    tmp_path, splits, capfd
) -> None:
    """1000 ImageNet classes in, the data's 10 out: the head is replaced and the run says so;
    the fine-tuned supernet is cached under a key of the file's content."""
    path = tmp_path / "vit.pt"
    torch.save({"model": timm_vit(classes=1000).state_dict()}, path)
    arch = ArchSpec(kind="supernet", img_size=16, patch_size=4, embed_dim=32, depth=2,
                    num_heads=2, mlp_ratio=2.0, head_dim=16, space=BOOT_SPACE,
                    pretrained=str(path))  # fmt: skip
    train = TrainSpec(epochs=1, batch_size=32, progress=False)
    cache = weights_file(arch, train, DATA, tmp_path)
    assert cache is not None and not cache.exists()
    model = build_model(arch, train, DATA, splits, str(tmp_path))
    assert cache.exists() and model.head.out_features == 10
    assert "its head has 1000 classes; replaced by a new head for the data's 10" in (
        capfd.readouterr().err
    )
    unordered = dataclasses.replace(arch, reorder=False)
    assert weights_file(unordered, train, DATA, tmp_path) != cache
    scratch = dataclasses.replace(arch, pretrained=None)
    assert weights_file(scratch, train, DATA, tmp_path) != cache
    torch.save({"model": timm_vit(classes=1000, seed=1).state_dict()}, path)  # new content
    assert weights_file(arch, train, DATA, tmp_path) != cache


def test_a_pretrained_vit_is_fine_tuned_standalone_from_its_weights(tmp_path, splits) -> None:
    path = tmp_path / "vit.pt"
    vit = timm_vit()
    torch.save(vit.state_dict(), path)
    arch = ArchSpec(kind="vit", img_size=16, patch_size=4, embed_dim=64, depth=3, num_heads=4,
                    head_dim=16, pretrained=str(path))  # fmt: skip
    x = torch.stack([splits.val[i][0] for i in range(8)])
    as_is = build_model(arch, TrainSpec(epochs=0), DATA, splits, str(tmp_path))
    with torch.no_grad():
        assert torch.equal(as_is(x), vit(x))  # epochs=0: the pretrained model itself
    tuned = build_model(arch, TrainSpec(epochs=1, progress=False), DATA, splits, str(tmp_path))
    with torch.no_grad():
        moved = (tuned(x) - vit(x)).abs().max()
    assert 0 < moved < 10 * vit(x).abs().max()  # trained from the pretrained weights


def test_tome_on_relative_position_blocks_follows_the_merged_tokens(autoformer_file, splits):
    """r=0 leaves AutoFormer's forward unchanged; with the tables zeroed, a merging model
    computes exactly what the same weights compute with timm's own attention."""
    x = torch.stack([splits.val[i][0] for i in range(4)])
    model = build_model(af_arch(autoformer_file), TrainSpec(), DATA, splits, "/x")
    with torch.no_grad():
        want = model(x)
        assert torch.equal(apply_tome(model, 0)(x), want)
        merged = apply_tome(model, 3)(x)
    assert merged.shape == want.shape and not torch.allclose(merged, want)
    stock = build_model(af_arch(autoformer_file), TrainSpec(), DATA, splits, "/x")
    plain = dataclasses.replace(AF_SPACE, rel_pos=0)
    timm_like = build_vit(
        ViTShape.of(64, 3, 2, 3.0, HD, global_pool="avg", norm_eps=1e-5), img_size=16,
        patch_size=4, in_chans=3, num_classes=10,
    )  # fmt: skip
    assert plain.rel_pos == 0
    state = {k: v for k, v in stock.state_dict().items() if ".rel_" not in k}
    timm_like.load_state_dict(state)
    with torch.no_grad():
        for name, t in stock.named_parameters():
            if ".rel_" in name:
                t.zero_()
        torch.testing.assert_close(
            apply_tome(stock, 3)(x), apply_tome(timm_like.eval(), 3)(x), atol=1e-5, rtol=1e-5
        )


def test_relative_position_rows_of_the_grid_are_kept_and_train_after_inference() -> None:
    """The unmerged grid's table rows are computed once (not per block and forward), equal
    the rows computed from the positions, and are ordinary tensors: a training step after an
    inference-mode forward still backpropagates through the gathers that use them."""
    from vitsweep.models.vit import RelPosAttention, grid_positions, table_rows

    torch.manual_seed(0)
    attn = RelPosAttention(12, max_distance=2, num_heads=3)
    x = torch.randn(2, 1 + 16, 12)
    with torch.inference_mode():
        first = attn(x)
    kept = attn.rel_k.rows(16, x.device, None)
    assert kept is attn.rel_v.rows(16, x.device, None)  # one computation, shared by both tables
    for got, want in zip(kept, table_rows(grid_positions(16), 2), strict=True):
        assert torch.equal(got, want) and not got.is_inference()
    y = attn(x)  # grad mode: the same rows feed gather and scatter_add
    torch.testing.assert_close(y, first, rtol=0, atol=0)
    y.square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in attn.rel_k.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in attn.rel_v.parameters())
    moved = attn.rel_k.rows(16, x.device, grid_positions(16) + 0.0)  # explicit positions
    assert all(torch.equal(a, b) for a, b in zip(moved, kept, strict=True))
