"""The weight-sharing supernet: slicing semantics, extraction, timm compatibility, files."""

from __future__ import annotations

import dataclasses

import pytest
import timm
import torch
from timm.layers import Attention
from timm.models.vision_transformer import VisionTransformer
from torch.utils.flop_counter import FlopCounterMode

from vitsweep import config
from vitsweep.models import Supernet
from vitsweep.models.checkpoint import CheckpointError
from vitsweep.spec import ConfigError, SpaceSpec


def space_of(arch: str) -> SpaceSpec:
    """A search space as users get it: from its YAML (conf/arch/<arch>.yaml), the one source."""
    space = config.trial_spec(config.compose([f"arch={arch}"])).arch.space
    assert space is not None
    return space


SMALL = SpaceSpec(embed_dim=(16, 24, 32), depth=(2, 3), mlp_ratio=(1.0, 2.0), num_heads=(1, 2, 3),
                  head_dim=8)  # fmt: skip


pytestmark = pytest.mark.usefixtures("one_thread")


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture
def net() -> Supernet:
    torch.manual_seed(0)
    return Supernet(SMALL, img_size=16, patch_size=4, in_chans=3, num_classes=5).eval()


@pytest.fixture
def x() -> torch.Tensor:
    return torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))


SUBNETS = [
    dict(embed_dim=16, depth=2, num_heads=1, mlp_ratio=1.0),
    dict(embed_dim=24, depth=3, num_heads=[3, 1, 2], mlp_ratio=[2.0, 1.0, 2.0]),
    dict(embed_dim=32, depth=3, num_heads=3, mlp_ratio=2.0),
]


@pytest.mark.parametrize("choice", SUBNETS)
def test_extracted_subnet_computes_the_supernet_forward(net, x, choice) -> None:
    sub = net.extract(**choice)
    with torch.no_grad():
        expected = net(x, **choice)
        got = sub(x)
    assert isinstance(sub, VisionTransformer) and not sub.training
    assert len(sub.blocks) == choice["depth"]
    heads = choice["num_heads"]
    heads = heads if isinstance(heads, list) else [heads] * choice["depth"]
    assert [b.attn.num_heads for b in sub.blocks] == heads
    assert all(type(b.attn) is Attention and b.attn.head_dim == 8 for b in sub.blocks)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_weight_entanglement_matches_masking_the_largest_model(net, x) -> None:
    """Independent of the slicing code: with the full embed dim, a subnet must equal the stored
    largest timm model with unused heads, hidden units and blocks zeroed out of the residual."""
    heads, ratios, depth = [1, 3], [1.0, 2.0], 2
    masked = net.extract()  # the largest, a plain copy of the stored weights
    with torch.no_grad():
        for i, blk in enumerate(masked.blocks):
            if i >= depth:  # a block whose residual branches add zero is the identity
                for lin in (blk.attn.proj, blk.mlp.fc2):
                    lin.weight.zero_()
                    lin.bias.zero_()
                continue
            blk.attn.proj.weight[:, heads[i] * 8 :] = 0  # heads beyond the subnet's
            blk.mlp.fc2.weight[:, int(32 * ratios[i]) :] = 0  # hidden units beyond the subnet's
        expected = masked(x)
        got = net.extract(embed_dim=32, depth=depth, num_heads=heads, mlp_ratio=ratios)(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_training_forward_reaches_only_the_subnet_slices(net, x) -> None:
    net.train()
    net(x, embed_dim=16, depth=2, num_heads=1, mlp_ratio=1.0).sum().backward()
    qkv = net.vit.blocks[0].attn.qkv.weight.grad.reshape(3, 24, 32)
    assert qkv[:, :8, :16].abs().sum() > 0
    assert qkv[:, 8:].abs().sum() == 0 and qkv[:, :, 16:].abs().sum() == 0
    assert net.vit.blocks[2].attn.qkv.weight.grad is None  # beyond the depth: untouched
    assert net.vit.pos_embed.grad[..., 16:].abs().sum() == 0


def test_extracted_subnet_is_independent_and_exactly_sized(net) -> None:
    sub = net.extract(embed_dim=24, depth=2, num_heads=[2, 1], mlp_ratio=[1.0, 2.0])
    e, tokens, classes = 24, 16 + 1, 5
    per_block = [  # norms, qkv, proj, fc1, fc2 -- counted by hand
        4 * e + (e * 3 * h * 8 + 3 * h * 8) + (h * 8 * e + e) + 2 * (e * r * e) + r * e + e
        for h, r in ((2, 1), (1, 2))
    ]
    expected = (3 * 16 * e + e) + e + tokens * e + sum(per_block) + 2 * e + (e * classes + classes)
    assert n_params(sub) == expected
    with torch.no_grad():
        sub.head.weight.add_(1.0)
    assert not torch.equal(net.vit.head.weight[:, :24], sub.head.weight)


def test_vit_tiny_dims_have_the_parameters_of_timm_vit_tiny() -> None:
    autoformer = space_of("autoformer_tiny")
    timm_blocks = dataclasses.replace(
        autoformer, rel_pos=0, global_pool="token", norm_eps=1e-6, change_qkv=False
    )
    net = Supernet(timm_blocks, img_size=224, patch_size=16, in_chans=3, num_classes=1000)
    sub = net.extract(embed_dim=192, depth=12, num_heads=3, mlp_ratio=4.0)
    ref = timm.create_model("vit_tiny_patch16_224", pretrained=False)
    assert n_params(sub) == n_params(ref) == 5_717_416
    # AutoFormer's blocks add two [2 * 14 + 2, 64] tables (rows, columns) for keys and values
    af = Supernet(autoformer, img_size=224, patch_size=16, in_chans=3, num_classes=1000)
    af_sub = af.extract(embed_dim=192, depth=12, num_heads=3, mlp_ratio=4.0)
    assert n_params(af_sub) - n_params(ref) == 12 * 4 * 30 * 64
    sub.load_state_dict(ref.state_dict(), strict=True)  # same names and shapes, layer for layer
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(sub(x), ref.eval()(x))


@pytest.mark.parametrize(
    ("choice", "message"),
    [
        (dict(embed_dim=20), "arch.embed_dim=20: valid: 16, 24, 32"),
        (dict(depth=4), "arch.depth=4: valid: 2, 3"),
        (dict(depth=2, num_heads=[1, 2, 3]), "arch.num_heads: 3 entries for depth 2"),
        (dict(depth=2, num_heads=[1, 4]), "arch.num_heads[1]=4: valid: 1, 2, 3"),
        (dict(mlp_ratio=3.0), "arch.mlp_ratio=3.0: valid: 1.0, 2.0"),
    ],
)
def test_extract_rejects_choices_outside_the_space(net, choice, message) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        net.extract(**choice)


def test_save_load_roundtrip_is_atomic_and_exact(net, x, tmp_path) -> None:
    path = net.save(tmp_path / "sn.pt", meta={"note": "hi"})
    # no temp file left behind; the checksum that later loads check the file against
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sn.pt", "sn.pt.sha256"]
    back = Supernet.load(path)
    assert back.space == SMALL and back.meta == {"note": "hi"}
    with torch.no_grad():
        torch.testing.assert_close(back(x, **SUBNETS[1]), net(x, **SUBNETS[1]), rtol=0, atol=0)


def test_corrupt_or_mismatched_checkpoint_is_a_one_line_error(net, tmp_path) -> None:
    path = net.save(tmp_path / "sn.pt")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"sn\.pt: unreadable checkpoint") as err:
        Supernet.load(path)
    assert "\n" not in str(err.value)

    obj = torch.load(net.save(tmp_path / "ok.pt"), weights_only=True)
    del obj["state_dict"]["vit.blocks.2.mlp.fc1.weight"]
    torch.save(obj, tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match=r"missing\.pt: weights do not match") as err:
        Supernet.load(tmp_path / "missing.pt")
    assert "\n" not in str(err.value)

    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match=r"other\.pt: not a vitsweep supernet checkpoint"):
        Supernet.load(tmp_path / "other.pt")


def test_cpu_space_spans_ten_times_in_params_and_flops() -> None:
    net = Supernet(space_of("supernet"), img_size=32, patch_size=4, in_chans=3, num_classes=10)
    cost = {}
    for name, shape in (("small", net.smallest), ("large", net.largest)):
        model = net.extract(shape=shape)
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(torch.randn(1, 3, 32, 32))
        cost[name] = (n_params(model), counter.get_total_flops())
    assert cost["large"][0] >= 10 * cost["small"][0]
    assert cost["large"][1] >= 10 * cost["small"][1]


def test_autoformer_spaces_are_the_published_ones() -> None:
    t, s, b = (space_of(k) for k in ("autoformer_tiny", "autoformer_small", "autoformer_base"))
    assert (t.embed_dim, t.depth, t.mlp_ratio, t.num_heads) == (
        (192, 216, 240), (12, 13, 14), (3.5, 4.0), (3, 4)
    )  # fmt: skip
    assert (s.embed_dim, s.num_heads, s.mlp_ratio) == ((320, 384, 448), (5, 6, 7), (3.0, 3.5, 4.0))
    assert (b.embed_dim, b.depth, b.num_heads) == ((528, 576, 624), (14, 15, 16), (9, 10))
    assert t.head_dim == s.head_dim == b.head_dim == 64
