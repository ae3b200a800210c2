"""precision=tq: the allocation's arithmetic, the coding against plain uniform quantization on
trained weights, the mode end to end on a subnet, a timm ViT and a timm ResNet, and the search."""

from __future__ import annotations

import copy
import heapq
import itertools
import math
from dataclasses import replace

import numpy as np
import optuna
import pytest
import timm
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import nn
from torch.utils.data import Dataset

from tests.conftest import tiny_vit
from vitsweep.data import load
from vitsweep.measure.accuracy import predict
from vitsweep.measure.cost import count_params
from vitsweep.models import ViTShape, build_vit
from vitsweep.precision import apply_precision, model_bytes, plan_metrics
from vitsweep.precision import transform as T
from vitsweep.precision.knobs import TQ_RATES
from vitsweep.precision.quantizers import fake_quantize
from vitsweep.precision.retrain import Recipe, retrain
from vitsweep.precision.tq import (
    TQLayer,
    apply_tq,
    choose_forwards,
    coded_layers,
    input_moments,
    output_error,
    tq_layers,
    tq_stats,
)
from vitsweep.precision.uniform import apply_uniform, uniform_layers
from vitsweep.runctx import RunContext
from vitsweep.spec import ConfigError, DataSpec, MeasureSpec, PrecisionSpec, TrialSpec
from vitsweep.vit_space import conditional

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def splits():
    return load(DataSpec(image_size=16))


@pytest.fixture(scope="module")
def trained(splits, one_thread, trained_vit_state) -> VisionTransformer:
    """A small timm ViT trained a few seconds on digits: weights with learned structure
    (`tiny_vit()` trained 12 epochs, once per run: conftest's `trained_vit_state`)."""
    model = tiny_vit()
    model.load_state_dict(trained_vit_state)
    pred, label = predict(model, RunContext(), splits.test)
    assert (pred == label).float().mean() > 0.6  # it learned: its weights are not the init's
    return model


def _variances(seed: int, n: int) -> np.ndarray:
    """A decaying spectrum with a spread of ~1e5, like a trained layer's KLT variances."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.lognormal(mean=-4.0, sigma=2.5, size=n))[::-1]


def _greedy(lam: np.ndarray, budget: int, max_bits: int) -> np.ndarray:
    """Textbook greedy marginal-return allocation, one bit at a time (the reference)."""
    bits = np.zeros(lam.size, dtype=np.int64)
    heap = [(-v, i) for i, v in enumerate(lam)]
    heapq.heapify(heap)
    for _ in range(budget):
        _, i = heapq.heappop(heap)
        bits[i] += 1
        if bits[i] < max_bits:
            heapq.heappush(heap, (-lam[i] * 4.0 ** -bits[i], i))
    return bits


# ----------------------------------------------------------------------------- maths


@pytest.mark.parametrize("rate", [0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 7.0])
@pytest.mark.parametrize("n", [16, 96, 384])
def test_allocation_meets_the_rate_exactly_and_water_fills(rate: float, n: int) -> None:
    lam = _variances(int(rate * 10) + n, n)
    bits = T.allocate_bits(lam, rate)
    assert bits.dtype.kind == "i" and bits.min() >= 0 and bits.max() <= T.MAX_COEFF_BITS
    assert bits.sum() == rate * n  # rate * rows is an integer for every case here: exact
    # The continuous reverse water-filling solution spends the same budget...
    theta = T.water_level(lam, rate)
    assert T.continuous_bits(lam, theta).sum() == pytest.approx(rate * n, abs=1e-6)
    # ...and every row whose variance is under the water level gets no bits.
    assert np.all(bits[lam < theta] == 0)
    assert (lam < theta).any() or rate >= 2  # the low rates do zero some rows
    # Integer solution = greedy marginal return (the same bits, one sort instead of a loop).
    assert np.array_equal(bits, _greedy(lam, int(rate * n), T.MAX_COEFF_BITS))
    # More variance never gets fewer bits.
    assert np.all(np.diff(bits) <= 0)


def test_allocation_floor_when_rate_times_rows_is_fractional() -> None:
    bits = T.allocate_bits(_variances(0, 7), 2.5)
    assert bits.sum() == math.floor(2.5 * 7) == T.budget_rows(2.5, 7)


@pytest.mark.parametrize("rate", [1.0, 1.5, 2.0])
@pytest.mark.parametrize(("kept_row_bits", "fixed_bits"), [(0, 0), (200, 0), (0, 900)])
def test_stored_allocation_spends_the_most_that_fits(
    rate: float, kept_row_bits: int, fixed_bits: int
) -> None:
    """Coefficients + side information within the stored budget, and one more of the greedy's
    bits would not fit; the depths are the greedy's (the same prefix of its order)."""
    n, cols = 48, 40
    lam = _variances(7, n)
    total = rate * n * cols
    bits = T.allocate_stored(lam, total, cols, kept_row_bits, fixed_bits)

    def cost(b: np.ndarray) -> int:
        return int(b.sum()) * cols + int(np.count_nonzero(b)) * kept_row_bits + fixed_bits

    assert cost(bits) <= total
    assert np.array_equal(bits, _greedy(lam, int(bits.sum()), T.MAX_COEFF_BITS))
    more = _greedy(lam, int(bits.sum()) + 1, T.MAX_COEFF_BITS)
    assert cost(more) > total
    if kept_row_bits == fixed_bits == 0:  # no side information: the coefficient allocation
        assert np.array_equal(bits, T.allocate_bits(lam, rate))


def test_packing_round_trips_at_mixed_widths() -> None:
    gen = torch.Generator().manual_seed(0)
    bits = torch.tensor([0, 1, 2, 3, 5, 7, 8, 0, 4])
    cols = 13
    codes = torch.stack([torch.randint(0, 2 ** int(b), (cols,), generator=gen) for b in bits]).to(
        torch.uint8
    )
    packed = T.pack_rows(codes, bits)
    assert packed.dtype == torch.uint8
    assert packed.numel() == T.packed_bytes(int(bits.sum()), cols) == math.ceil(30 * 13 / 8)
    assert torch.equal(T.unpack_rows(packed, bits, cols), codes)


def _tq_error(layer: nn.Module, rate: float) -> float:
    w = layer.weight.detach()
    return float((TQLayer(layer, rate).weight - w).pow(2).sum())


def test_distortion_falls_as_rate_rises(trained: VisionTransformer) -> None:
    for name, layer in coded_layers(trained):
        errors = [_tq_error(layer, r) for r in (1, 2, 3, 4, 6, 8)]
        assert all(a > b for a, b in itertools.pairwise(errors)), (name, errors)


@pytest.mark.parametrize("rate", [2, 3, 4])
def test_tq_codes_trained_weights_better_than_uniform_at_equal_rate(
    trained: VisionTransformer, rate: int
) -> None:
    """Summed over the model: tq's ||W - W_q||^2 is below the per-channel uniform quantizer's
    (quantizers.py, the one int8/mixed use) and below the same midrise quantizer with equal bits
    on every row and no transform, so the KLT + allocation are what wins, not the quantizer."""
    tq = uniform = midrise = 0.0
    for _, layer in coded_layers(trained):
        w = layer.weight.detach()
        tq += _tq_error(layer, rate)
        uniform += float((fake_quantize(w, rate) - w).pow(2).sum())
        a, _ = T.as_matrix(w)
        bits = torch.full((a.shape[0],), rate)
        codes, step = T.quantize_rows(a, bits)
        midrise += float((T.dequantize_rows(codes, bits, step).double() - a).pow(2).sum())
    assert tq < 0.8 * uniform
    assert tq < 0.8 * midrise


# ----------------------------------------------------------------------------- the mode


def _subnet() -> nn.Module:
    """An AutoFormer-style subnet from vitsweep.models: per-layer heads, fixed head dim."""
    torch.manual_seed(0)
    shape = ViTShape.of(24, 2, [2, 3], [3.0, 4.0], head_dim=16)
    return build_vit(shape, img_size=16, patch_size=4, in_chans=3, num_classes=10).eval()


def _timm_vit() -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, num_classes=10
    ).eval()


def _timm_resnet() -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model(
        "resnet18", pretrained=False, num_classes=10, channels=(16, 32, 64, 128), stem_width=16
    ).eval()


class _Images(Dataset):
    def __init__(self, size: int, n: int = 16) -> None:
        gen = torch.Generator().manual_seed(1)
        self.x = torch.randn(n, 3, size, size, generator=gen)
        self.y = torch.randint(0, 10, (n,), generator=gen)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i], self.y[i]


def _expected_bytes(float_model: nn.Module, q: nn.Module) -> tuple[int, int]:
    """(exact bytes of the coded model, the bound rate/32 of the weights + transforms): the
    weights leave as fp32 and come back as packed codes + int8 basis + fp32 scales/steps +
    uint8 bit-depths, biases and every other tensor unchanged."""
    exact = bound = model_bytes(float_model)
    for layer in tq_layers(q):
        k = layer.bits.numel()
        stored = T.packed_bytes(int(layer.bits.long().sum()), layer.cols) + layer.rows * k + 9 * k
        exact += stored - 4 * layer.numel
        whole_basis = layer.rows * layer.rows + 9 * layer.rows
        bound += math.ceil(layer.rate * layer.numel / 8) + whole_basis - 4 * layer.numel
    return exact, bound


@pytest.mark.parametrize(
    ("make", "size"),
    [(_subnet, 16), (_timm_vit, 32), (_timm_resnet, 32)],
    ids=["subnet", "timm-vit", "timm-resnet"],
)
@pytest.mark.parametrize("with_calib", [False, True], ids=["weights", "calib"])
def test_tq_end_to_end(make, size: int, with_calib: bool) -> None:
    base = make()
    x = torch.randn(4, 3, size, size)
    with torch.no_grad():
        ref = base(x)
    calib = _Images(size) if with_calib else None
    spec = PrecisionSpec(mode="tq", rate=3.0)
    model, ctx = apply_precision(copy.deepcopy(base), spec, calib=calib, calib_batch_size=8)
    n_coded = len(coded_layers(base))
    assert not coded_layers(model) and len(tq_layers(model)) == n_coded
    with torch.no_grad():
        out = ctx.forward(model, x)
    assert out.shape == ref.shape and torch.isfinite(out).all()
    # Random weights, 3 bits: still the float model's output plus error, not noise (a model
    # that lost the signal would sit at >= 1); accuracy is judged on trained weights below.
    assert float((out - ref).norm() / ref.norm()) < 0.9
    stats = tq_stats(model)
    assert stats.rate == pytest.approx(3.0, abs=0.02)  # exact per layer but for a row-bit floor
    assert stats.weighted == (n_coded if with_calib else 0)
    assert ("output-weighted" if with_calib else "weights-only") in ctx.precision_exec
    exact, bound = _expected_bytes(base, model)
    fp32 = model_bytes(base)
    # rate/32 of the weights' fp32 bytes, plus at most a d x d 8-bit transform per layer (the
    # overhead), plus the float rest: 14-26% of fp32 for these three models.
    assert model_bytes(model) == exact <= bound < 0.3 * fp32
    assert count_params(model) == count_params(base)  # coded weights are still parameters
    assert apply_precision(model, spec, calib=calib)[0] is model  # idempotent


def test_tq_keeps_the_accuracy_of_a_trained_model(trained, splits) -> None:
    """Top-1 on the test split: tq at 3 bits within 3 points of fp32, with either allocation,
    and at 2 bits ahead of the per-channel uniform quantizer (ternary at 2 bits)."""

    def top1(model: nn.Module, ctx: RunContext) -> float:
        pred, label = predict(model, ctx, splits.test)
        return float((pred == label).float().mean()) * 100

    fp32 = top1(trained, RunContext())
    uniform = copy.deepcopy(trained)
    with torch.no_grad():
        for _, layer in coded_layers(uniform):
            layer.weight.copy_(fake_quantize(layer.weight, 2))
    for calib in (None, splits.train):
        results = {}
        for rate in (2.0, 3.0):
            spec = PrecisionSpec(mode="tq", rate=rate)
            results[rate] = top1(*apply_precision(copy.deepcopy(trained), spec, calib=calib))
        assert results[3.0] >= fp32 - 3
        assert results[2.0] > top1(uniform, RunContext())


def test_a_coded_model_reloads_from_its_state_dict_onto_zeroed_weights() -> None:
    """An export rebuilds the module tree from zeroed weights, applies the same precision, then
    loads the saved tensors: the layers take the saved shapes (rows kept differ) and the output
    is the coded model's exactly."""
    base = _timm_resnet()
    spec = PrecisionSpec(mode="tq", rate=2.0)
    model, ctx = apply_precision(copy.deepcopy(base), spec)
    skeleton = copy.deepcopy(base)
    with torch.no_grad():
        for p in skeleton.parameters():
            p.zero_()
    rebuilt, _ = apply_precision(skeleton, spec)
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(ctx.forward(rebuilt, x), ctx.forward(model, x))
    assert model_bytes(rebuilt) == model_bytes(model)


def test_finetuning_lowers_the_loss_and_keeps_the_rate(trained, splits) -> None:
    def train_loss(model: nn.Module, ctx: RunContext) -> float:
        x, y = splits.train.tensors
        with torch.no_grad():
            return float(F.cross_entropy(ctx.forward(model, x), y))

    # Like with like: both allocate their bits on the same calibration data, so the only
    # difference is the 40 fine-tuning steps (measured here: 0.507 -> 0.456 train loss; the
    # held-out loss falls with it, 0.637 -> 0.584). A relative margin, not a CPU's number.
    plain, ctx = apply_precision(
        copy.deepcopy(trained), PrecisionSpec(mode="tq", rate=2.0), calib=splits.train
    )
    spec = PrecisionSpec(mode="tq", rate=2.0, finetune_steps=40)
    tuned, tctx = apply_precision(copy.deepcopy(trained), spec, calib=splits.train)
    assert tq_stats(plain).weighted and tq_stats(tuned).weighted
    assert train_loss(tuned, tctx) < 0.97 * train_loss(plain, ctx)
    assert "fine-tuned 40 steps" in tctx.precision_exec
    assert tq_stats(tuned).rate == tq_stats(plain).rate == 2.0
    assert all(layer.latent is None for layer in tq_layers(tuned))
    # the forms chosen by timing are plain tensors, whichever won: usable with autograd on
    assert not any(
        t.is_inference() for layer in tq_layers(tuned) for t in (layer.first, layer.second)
    )
    # What runs is what is stored: a reload of the state_dict gives the same logits.
    again, _ = apply_precision(
        copy.deepcopy(trained), PrecisionSpec(mode="tq", rate=2.0), calib=splits.train
    )
    again.load_state_dict(tuned.state_dict(), strict=True)
    # each layer's forward form was chosen by timing it (`choose_forwards`), so the two may
    # differ in rounding: run the reload in the forms the tuned model runs
    for mine, theirs in zip(tq_layers(again), tq_layers(tuned), strict=True):
        if mine.can_factorize:
            mine.use_factorized(theirs.factorized)
    x = splits.test.tensors[0][:32]
    assert torch.equal(tctx.forward(again, x), tctx.forward(tuned, x))


@pytest.mark.parametrize(
    ("kwargs", "calib", "key"),
    [
        ({"rate": 0.0}, None, "precision.rate"),
        ({"rate": -1.0}, None, "precision.rate"),
        ({"rate": 8.5}, None, "precision.rate"),
        ({"finetune_steps": 5}, None, "precision.finetune_steps"),
        ({"finetune_steps": -1}, None, "precision.finetune_steps"),
        ({"transform": "dct"}, None, "precision.transform"),
        ({"budget": "bytes"}, None, "precision.budget"),
    ],
    ids=["rate0", "rate-neg", "rate>8", "finetune-no-calib", "finetune-neg", "transform", "budget"],
)
def test_bad_input_is_a_one_line_config_error(kwargs, calib, key: str) -> None:
    base = _subnet()
    with pytest.raises(ConfigError) as err:
        apply_precision(base, PrecisionSpec(mode="tq", **kwargs), calib=calib)
    message = str(err.value)
    assert message.startswith(key + "=") and "\n" not in message
    assert not tq_layers(base)  # refused before any surgery


# ----------------------------------------------------------------------------- the search


def test_the_rate_is_searched_only_for_tq() -> None:
    study = optuna.create_study(directions=["maximize"])  # in-memory storage
    base = TrialSpec()
    for precision in ("tq", "int8", "mixed", "tq"):
        trial = study.ask()
        out = conditional(trial, base, {"precision": precision})
        if precision == "tq":
            assert out["precision.rate"] in TQ_RATES
            assert trial.params["precision.rate"] == out["precision.rate"]
        else:
            assert "precision.rate" not in out and "precision.rate" not in trial.params
        study.tell(trial, 0.5)
    fixed = study.ask()
    assert "precision.rate" not in conditional(
        fixed, base, {"precision": "tq", "precision.rate": 2}
    )
    dist = study.trials[0].distributions["precision.rate"]
    assert tuple(dist.choices) == TQ_RATES


# ----------------------------------------------------------------------------- low rates


@pytest.mark.parametrize("rate", [1.0, 1.5])
@pytest.mark.parametrize("transform", ["klt", "identity", "auto"])
def test_rates_down_to_one_round_trip(trained, splits, rate: float, transform: str) -> None:
    """Rates 1 and 1.5, with either transform or the per-layer choice: the coefficient rate is
    the one asked (bar a row-bit floor), the model keeps the float model's signal, and a reload
    of its state_dict onto a layer tree coded from zeroed weights runs the same logits."""
    calib = [splits.train.tensors[0][:64]]
    model = copy.deepcopy(trained)
    apply_tq(model, rate, calib, transform=transform)
    stats = tq_stats(model)
    assert stats.rate == pytest.approx(rate, abs=0.02)
    kinds = {layer.identity for layer in tq_layers(model)}
    assert kinds == {"klt": {False}, "identity": {True}}.get(transform, kinds)
    x = splits.test.tensors[0][:64]
    with torch.no_grad():
        ref, out = trained(x), model(x)
    assert float((out - ref).norm() / ref.norm()) < 0.9
    skeleton = copy.deepcopy(trained)
    with torch.no_grad():
        for p in skeleton.parameters():
            p.zero_()
    apply_tq(skeleton, rate, calib, transform="klt" if transform == "identity" else "identity")
    skeleton.load_state_dict(model.state_dict(), strict=True)
    assert [m.identity for m in tq_layers(skeleton)] == [m.identity for m in tq_layers(model)]
    with torch.no_grad():
        assert torch.equal(skeleton(x), out)


@pytest.mark.parametrize("rate", [1.0, 1.5, 2.0])
def test_a_stored_rate_counts_the_transform(trained, splits, rate: float) -> None:
    """`stored`: every bit the coded weights store, transforms included, fits the rate, and the
    per-layer choice is never worse than either pure coding in output error at that budget."""
    calib = [splits.train.tensors[0][:64]]
    coded = {}
    for transform in ("klt", "identity", "auto"):
        model = copy.deepcopy(trained)
        apply_tq(model, rate, calib, transform=transform, stored=True)
        stats = tq_stats(model)
        assert stats.effective_bits <= rate
        # ...and so do the bytes that are saved (codes pack to whole bytes: one more a layer).
        rest = model_bytes(trained) - 4 * stats.weights
        assert model_bytes(model) - rest <= rate * stats.weights / 8 + stats.layers
        coded[transform] = model
    assert tq_stats(coded["identity"]).effective_bits > rate - 0.25  # the budget is spent
    moments = input_moments(trained, dict(coded_layers(trained)), calib)
    for (name, layer), k, i, a in zip(
        coded_layers(trained),
        *(tq_layers(coded[t]) for t in ("klt", "identity", "auto")),
        strict=True,
    ):
        errors = [output_error(layer.weight, m, moments.get(name)) for m in (k, i, a)]
        assert errors[2] == min(errors[:2])


@pytest.mark.parametrize("bits", [1, 2])
def test_uniform_baseline_retrains_through_the_same_loop(trained, splits, bits: int) -> None:
    """The baseline tq is judged against: per-channel codes (1 bit: +-1) retrained by the loop
    tq uses lower the train loss, keep their code set and scales, and run what they store."""
    model = copy.deepcopy(trained)
    apply_uniform(model, bits, coded_layers(model))
    layers = uniform_layers(model)
    scales = [m.scale.clone() for m in layers]
    x, y = splits.train.tensors
    with torch.no_grad():
        before = float(F.cross_entropy(model(x), y))
    retrain(model, splits.train, Recipe(steps=30, lr=1e-3))
    with torch.no_grad():
        after = float(F.cross_entropy(model(x), y))
    assert after < 0.95 * before
    top = 1 if bits == 1 else 2 ** (bits - 1) - 1
    for m, s in zip(layers, scales, strict=True):
        assert m.latent is None and torch.equal(m.scale, s)
        assert int(m.codes.abs().max()) <= top and (bits > 1 or int(m.codes.abs().min()) == 1)
        shape = (-1,) + (1,) * (m.codes.dim() - 1)
        assert torch.equal(m.weight, m.codes.float() * s.reshape(shape))
    assert all(m.stored_bits == bits * m.numel + 32 * m.scale.numel() for m in layers)


def test_retraining_records_its_seconds_and_distillation_needs_a_teacher(trained, splits) -> None:
    spec = PrecisionSpec(mode="tq", rate=1.5, finetune_steps=3, budget="stored", transform="auto")
    model, _ = apply_precision(copy.deepcopy(trained), spec, calib=splits.train)
    metrics = plan_metrics(model)
    assert set(metrics) == {"retrain_s"} and metrics["retrain_s"] > 0
    assert tq_stats(model).effective_bits <= 1.5  # the stored budget reached the layers
    plain, _ = apply_precision(copy.deepcopy(trained), replace(spec, finetune_steps=0))
    assert "retrain_s" not in plan_metrics(plain)
    with pytest.raises(ValueError, match="teacher"):
        retrain(copy.deepcopy(plain), splits.train, Recipe(steps=1, distill=True))


@pytest.mark.parametrize(("out_f", "in_f"), [(96, 24), (24, 96), (48, 48)])
def test_the_transform_domain_forward_computes_the_coded_weight(out_f: int, in_f: int) -> None:
    """y = U (C x) is the same map as the rebuilt weight W = U C (either side transformed),
    with rows dropped at 1 bit; its runtime factors are not stored."""
    torch.manual_seed(out_f + in_f)
    lin = nn.Linear(in_f, out_f)
    layer = TQLayer(lin, 1.0, stored=True)
    assert layer.can_factorize and 0 < layer.kept < min(out_f, in_f)
    x = torch.randn(5, 7, in_f)
    with torch.no_grad():
        dense = layer(x)
        want = F.linear(x, layer.weight, lin.bias)
        stored = model_bytes(layer)
        layer.use_factorized(True)
        got = layer(x)
    assert torch.allclose(dense, want, atol=1e-5)
    assert torch.allclose(got, want, atol=1e-4 * float(want.abs().max()))
    assert layer.first.shape == (layer.kept, in_f) and layer.second.shape == (out_f, layer.kept)
    assert model_bytes(layer) == stored and "first" not in layer.state_dict()
    identity = TQLayer(lin, 1.0, analysis=T.Analysis.of(lin.weight, True), stored=True)
    with pytest.raises(ValueError, match="only a Linear coded with a transform"):
        identity.use_factorized(True)


def test_each_layer_is_left_on_the_forward_timed_faster(trained) -> None:
    model = copy.deepcopy(trained)
    x = torch.randn(8, 3, 16, 16)
    apply_tq(model, 1.0, [x], transform="klt", stored=True)
    with torch.no_grad():
        before = model(x)
    timing = MeasureSpec(threads=1, lock=False)
    chosen = choose_forwards(model, x, timing)
    layers = dict(model.named_modules())
    linears = [m for m in tq_layers(model) if m.can_factorize]
    assert len(chosen) == len(linears) > 0
    for c in chosen:
        assert layers[c.name].factorized == (c.factorized_s < c.dense_s)
        assert (
            c.dense_s > 0
            and c.factorized_s > 0
            and 0 < c.kept <= min(c.in_features, c.out_features)
        )
        assert c.rows % 8 == 0  # every image's tokens
    with torch.no_grad():
        after = model(x)
    assert torch.allclose(after, before, atol=1e-4 * float(before.abs().max()))
