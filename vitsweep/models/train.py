"""Training, cached and resumable: the supernet (sandwich rule) and standalone ViTs.

One loop (`fit`) serves both: AdamW without decay on norms/biases/embeddings, linear warm-up then
cosine per step, label smoothing, a progress bar, an atomic checkpoint after every epoch holding
model + optimizer + scheduler + epoch + RNG state, so a killed run resumes on the same schedule.
`cached` wraps a run in a file lock so that workers starting together train a file only once.
"""

from __future__ import annotations

import dataclasses
import math
import random
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock, Timeout
from timm.optim import param_groups_weight_decay
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from vitsweep.data import generator_version
from vitsweep.data.splits import Splits
from vitsweep.measure.device import resolve_device
from vitsweep.measure.speed import thread_scope
from vitsweep.models import spaces
from vitsweep.models.checkpoint import (
    FORMAT_VERSION,
    CheckpointError,
    atomic_save,
    cache_key,
    damage,
    load_state,
    plain,
    quarantine,
    safe_load,
)
from vitsweep.models.supernet import Supernet
from vitsweep.spec import ArchSpec, ConfigError, DataSpec, SpaceSpec, TrainSpec

# Called after each epoch's checkpoint is on disk with {"epoch", "loss", "val_acc", ...}.
EpochHook = Callable[[dict[str, Any]], None]
# One optimisation step's forward/backward: (model, x, y, rng, criterion) -> mean loss.
StepFn = Callable[[nn.Module, torch.Tensor, torch.Tensor, random.Random, nn.Module], float]


def lr_factor(step: int, *, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """LR multiplier at optimizer step `step`: linear warm-up to 1, then cosine to `min_ratio`."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def check_train(train: TrainSpec, splits: Splits) -> None:
    """What `TrainSpec` cannot check on its own (it validates its ranges when built)."""
    if train.epochs > 0 and len(splits.train) == 0:  # type: ignore[arg-type]
        raise ConfigError("data: the training split is empty; nothing to train on")


# Images the per-epoch progress numbers are computed on: a strided sample of the val split, so
# that a 7,000-image split does not cost more per epoch than training does (they decide nothing).
MONITOR_IMAGES = 1024


def monitor_set(dataset: Dataset) -> Dataset:
    """At most MONITOR_IMAGES of `dataset`, evenly strided (splits may be in class order)."""
    n = len(dataset)  # type: ignore[arg-type]
    if n <= MONITOR_IMAGES:
        return dataset
    return Subset(dataset, range(0, n, math.ceil(n / MONITOR_IMAGES)))


@torch.inference_mode()
def accuracy(
    forward: Callable[[torch.Tensor], torch.Tensor],
    dataset: Dataset,
    device: torch.device,
    batch_size: int = 256,
) -> float:
    """Top-1 accuracy of `forward` (logits) over `dataset`."""
    correct = total = 0
    for x, y in DataLoader(dataset, batch_size=batch_size):
        pred = forward(x.to(device)).argmax(-1).cpu()
        correct += int((pred == y).sum())
        total += len(y)
    return correct / max(1, total)


def fit(
    model: nn.Module,
    train: TrainSpec,
    splits: Splits,
    *,
    step_fn: StepFn,
    eval_fn: Callable[[nn.Module, torch.device], dict[str, float]],
    state_path: Path,
    config: dict[str, Any],
    desc: str,
    on_epoch: EpochHook | None = None,
) -> dict[str, Any]:
    """Train `model` in place for `train.epochs`, resuming from `state_path` if it exists.

    Returns {"history": per-epoch records, "lrs": the LR of every optimizer step}. The training
    RNG (global torch state, the data order, the subnet sampler) is forked so the caller's is
    untouched, and saved with each checkpoint so a resumed run draws what an unbroken one would.
    """
    check_train(train, splits)
    with thread_scope(train.threads):  # 0: leave torch's default
        device = torch.device(resolve_device("auto"))  # training follows the GPU when there is one
        model.to(device)
        groups = param_groups_weight_decay(
            model, train.weight_decay, no_weight_decay_list=("*pos_embed", "*cls_token")
        )
        opt = torch.optim.AdamW(groups, lr=train.lr)
        data_gen = torch.Generator().manual_seed(train.seed)
        loader = DataLoader(
            splits.train, batch_size=train.batch_size, shuffle=True, generator=data_gen
        )
        steps = len(loader)
        total = train.epochs * steps
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt,
            partial(
                lr_factor,
                warmup_steps=min(train.warmup_epochs * steps, total),
                total_steps=total,
                min_ratio=train.min_lr / train.lr,
            ),
        )
        sampler = random.Random(train.seed)
        criterion = nn.CrossEntropyLoss(label_smoothing=train.label_smoothing)
        history: list[dict[str, Any]] = []
        lrs: list[float] = []
        start = 0

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(train.seed)
            why = damage(state_path, "train_state") if state_path.exists() else None
            if why is not None:
                quarantine(state_path, why)  # start over rather than refuse: it is our own file
            if state_path.exists():
                state = safe_load(state_path, "train_state")
                if state.get("config") != config:
                    raise CheckpointError(f"{state_path}: resume state belongs to another run")
                load_state(model, state["model"], state_path)
                try:
                    opt.load_state_dict(state["optimizer"])
                    sched.load_state_dict(state["scheduler"])
                    torch.set_rng_state(state["rng"]["torch"])
                    data_gen.set_state(state["rng"]["data"])
                    sampler.setstate(_as_tuple(state["rng"]["sampler"]))
                except (KeyError, ValueError, TypeError, RuntimeError) as e:
                    raise CheckpointError(f"{state_path}: bad resume state ({e!r})"[:240]) from None
                start = int(state["epoch"])
                history, lrs = list(state["history"]), list(state["lrs"])

            bar = tqdm(
                total=total,
                initial=start * steps,
                desc=desc,
                disable=not train.progress,
                file=sys.stderr,
                dynamic_ncols=True,
            )
            try:
                for epoch in range(start, train.epochs):
                    model.train()
                    losses = []
                    for x, y in loader:
                        x, y = x.to(device), y.to(device)
                        lrs.append(opt.param_groups[0]["lr"])
                        opt.zero_grad(set_to_none=True)
                        losses.append(step_fn(model, x, y, sampler, criterion))
                        opt.step()
                        sched.step()
                        bar.update(1)
                        bar.set_postfix(epoch=epoch + 1, loss=f"{losses[-1]:.3f}")
                    model.eval()
                    record = {"epoch": epoch + 1, "loss": sum(losses) / len(losses)}
                    record.update(eval_fn(model, device))
                    history.append(record)
                    bar.set_postfix(
                        {k: f"{v:.3f}" if isinstance(v, float) else v for k, v in record.items()}
                    )
                    atomic_save(
                        {
                            "kind": "train_state",
                            "format": FORMAT_VERSION,
                            "config": config,
                            "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                            "optimizer": opt.state_dict(),
                            "scheduler": _scheduler_state(sched),
                            "epoch": epoch + 1,
                            "rng": {
                                "torch": torch.get_rng_state(),
                                "data": data_gen.get_state(),
                                "sampler": sampler.getstate(),
                            },
                            "history": history,
                            "lrs": lrs,
                        },
                        state_path,
                    )
                    if on_epoch is not None:
                        on_epoch(dict(record))
            finally:
                bar.close()
        model.to("cpu").eval()
        return {"history": history, "lrs": lrs}


def _scheduler_state(sched: torch.optim.lr_scheduler.LambdaLR) -> dict[str, Any]:
    """LambdaLR's state without the lambda (rebuilt from the spec; a partial cannot be stored)."""
    state = sched.state_dict()
    state["lr_lambdas"] = [None] * len(state.get("lr_lambdas", []))
    return state


def _as_tuple(v: Any) -> Any:
    """`random.Random.setstate` wants tuples; a checkpoint may hand back lists."""
    return tuple(_as_tuple(x) for x in v) if isinstance(v, list | tuple) else v


def cached(path: Path, produce: Callable[[], None], kind: str) -> Path:
    """Run `produce` (which writes `path`) unless an intact `path` exists; one worker at a time
    per file. A damaged cache file (checksum or load check) is moved aside and rebuilt.

    A worker that finds the lock taken waits for it, then sees the file and returns: a supernet
    is never trained twice, whichever worker started first.
    """
    if path.exists() and damage(path, kind) is None:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path.with_suffix(".lock")))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        print(f"vitsweep: waiting for another worker to finish {path}", file=sys.stderr)
        lock.acquire()
    try:
        why = damage(path, kind) if path.exists() else "missing"
        if why is not None:
            if path.exists():
                quarantine(path, why)
            produce()
    finally:
        lock.release()
    return path


# -- the supernet ----------------------------------------------------------------------------


def supernet_path(
    space: SpaceSpec,
    data: DataSpec,
    train: TrainSpec,
    root: str | Path,
    *,
    img_size: int,
    patch_size: int,
    start: dict[str, Any] | None = None,
) -> Path:
    """<root>/supernets/<key>.pt, key = hash of data (and its renderer) + space + input geometry
    + training + what it started from (`start`, when not from scratch)."""
    parts = {} if start is None else {"start": start}
    key = cache_key(
        kind="supernet",
        data=data,
        generator=generator_version(data),
        space=space_key(space),
        img_size=img_size,
        patch_size=patch_size,
        train=train_key(train),
        **parts,
    )
    return Path(root) / "supernets" / f"{key}.pt"


def space_key(space: SpaceSpec) -> dict[str, Any]:
    """The space's fields, block options left out at their defaults: supernets cached before
    the options existed keep their keys."""
    d = plain(space)
    defaults = (("rel_pos", 0), ("global_pool", "token"), ("norm_eps", 1e-6), ("change_qkv", False))
    for name, default in defaults:
        if d.get(name) == default:
            d.pop(name)
    return d


def arch_key(arch: ArchSpec) -> dict[str, Any]:
    """The arch's fields, the pretrained start and fine-tuning left out while unset: models
    cached before they existed keep their keys."""
    d = plain(arch)
    if d.get("pretrained") is None:
        d.pop("pretrained", None)
        d.pop("reorder", None)
    if not d.get("finetune"):
        d.pop("finetune", None)
    return d


def train_key(train: TrainSpec) -> dict[str, Any]:
    """The training fields that change the supernet's weights (not the progress bar);
    `supernet_epochs` only where it differs from `epochs`, so that one training has one key
    (and supernets cached before the field existed keep theirs)."""
    d = plain(train)
    d.pop("progress", None)
    if train.teacher is not None:
        d["teacher"] = arch_key(train.teacher)
    if d.get("supernet_epochs") in (None, d["epochs"]):
        d.pop("supernet_epochs", None)
    return d


# Fields only a supernet's training reads: a standalone model's key leaves them out, so the
# baseline trial and the teacher it is for the supernet are one cached model, trained once.
SUPERNET_ONLY = (
    "supernet_epochs",
    "sandwich_random",
    "distill",
    "distill_temperature",
    "distill_weight",
    "teacher",
)


def standalone_key(train: TrainSpec) -> dict[str, Any]:
    """The training fields that change a standalone model's weights."""
    d = train_key(train)
    for k in SUPERNET_ONLY:
        d.pop(k, None)
    return d


def sandwich_step(
    net: Supernet,
    x: torch.Tensor,
    y: torch.Tensor,
    rng: random.Random,
    criterion: nn.Module,
    *,
    n_random: int,
    distill: str = "none",
    temperature: float = 1.0,
    teacher: nn.Module | None = None,
    weight: float = 0.5,
) -> float:
    """Largest, smallest and `n_random` random subnets on one batch, gradients summed.

    Training the extremes every step bounds the space (BigNAS/OFA's sandwich rule); the random
    ones cover the middle. Each backward runs before the next forward to keep memory at one
    subnet's activations. `distill="teacher"` (DeiT's soft distillation): every subnet learns
    `(1 - weight)` x the labels + `weight` x the soft predictions of `teacher`, a trained
    standalone model (on a small training set its soft targets carry what the labels do not).
    `distill="inplace"` (BigNAS in-place distillation): the largest subnet learns from the
    labels, every other one from the largest's soft predictions of the same batch (detached);
    with a few hundred steps the largest teaches little for most of training.
    """
    shapes = [net.largest, net.smallest] + [spaces.sample(net.space, rng) for _ in range(n_random)]
    total = 0.0
    soft: torch.Tensor | None = None
    if distill == "teacher":
        assert teacher is not None
        with torch.no_grad():
            soft = F.softmax(teacher(x) / temperature, dim=-1)
    for i, shape in enumerate(shapes):
        logits = net(x, shape=shape)
        if distill == "teacher":
            assert soft is not None
            loss = (1 - weight) * criterion(logits, y) + weight * soft_cross_entropy(
                logits, soft, temperature
            )
        elif i == 0 or distill == "none":
            loss = criterion(logits, y)
            if distill != "none":
                soft = F.softmax(logits.detach() / temperature, dim=-1)
        else:
            assert soft is not None
            loss = soft_cross_entropy(logits, soft, temperature)
        loss.backward()
        total += float(loss.detach())
    return total / len(shapes)


def soft_cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Cross-entropy against a soft target distribution at `temperature`, scaled by T^2 so its
    gradient keeps the magnitude of the hard-label loss (Hinton et al.)."""
    logp = F.log_softmax(logits / temperature, dim=-1)
    return -(target * logp).sum(-1).mean() * temperature**2


def train_supernet(
    space: SpaceSpec,
    data: DataSpec,
    train: TrainSpec,
    splits: Splits,
    root: str | Path,
    *,
    patch_size: int = 4,
    img_size: int | None = None,
    on_epoch: EpochHook | None = None,
    teacher: Callable[[], nn.Module] | None = None,
    start: Callable[[], Supernet] | None = None,
    start_key: dict[str, Any] | None = None,
) -> Path:
    """Train (or resume, or find cached) the supernet of `space` on `splits`; returns its file.

    `patch_size`/`img_size` (default: the data's size) fix the input geometry, part of the key.
    `teacher` (train.distill=teacher) builds the trained teacher, called only when the supernet
    is not cached; the teacher's architecture is part of the key through `train.teacher`.
    `start` builds the supernet fine-tuning starts from (pretrained weights; None: a seeded
    init), `start_key` names it in the cache key.
    """
    img_size = splits.image_size if img_size is None else int(img_size)
    if img_size != splits.image_size:
        raise ConfigError(
            f"arch.img_size={img_size}: differs from data.image_size={splits.image_size}"
        )
    if patch_size < 1 or img_size % patch_size:
        raise ConfigError(f"arch.patch_size={patch_size}: must divide image size {img_size}")
    spaces.validate_space(space)
    check_train(train, splits)
    path = supernet_path(
        space, data, train, root, img_size=img_size, patch_size=patch_size, start=start_key
    )

    def produce() -> None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(train.seed)
            net = (
                Supernet(
                    space,
                    img_size=img_size,
                    patch_size=patch_size,
                    in_chans=splits.in_chans,
                    num_classes=splits.num_classes,
                )
                if start is None
                else start()
            )

        watch = monitor_set(splits.val)

        def evaluate(model: nn.Module, device: torch.device) -> dict[str, float]:
            assert isinstance(model, Supernet)
            return {
                "val_acc_largest": accuracy(partial(model, shape=model.largest), watch, device),
                "val_acc_smallest": accuracy(partial(model, shape=model.smallest), watch, device),
            }

        config = {"key": path.stem, "what": "supernet"}
        teacher_model = None
        if train.distill == "teacher":
            if teacher is None:
                raise ConfigError("train.distill=teacher: no teacher model was given")
            # on the device fit() trains on: the same one rule picks it
            teacher_model = teacher().eval().to(torch.device(resolve_device("auto")))
        result = fit(
            net,
            dataclasses.replace(train, epochs=train.supernet_schedule),
            splits,
            step_fn=partial(
                sandwich_step,
                n_random=train.sandwich_random,
                distill=train.distill,
                temperature=train.distill_temperature,
                teacher=teacher_model,
                weight=train.distill_weight,
            ),
            eval_fn=evaluate,
            state_path=path.with_suffix(".train.pt"),
            config=config,
            desc=f"supernet {path.stem}",
            on_epoch=on_epoch,
        )
        meta = {
            **result,
            "data": plain(data),
            "train": train_key(train),
            "class_names": list(splits.class_names),
        }
        net.save(path, meta=meta)
        path.with_suffix(".train.pt").unlink(missing_ok=True)

    return cached(path, produce, "supernet")


def plain_step(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    rng: random.Random,
    criterion: nn.Module,
) -> float:
    """One ordinary forward/backward (standalone models)."""
    loss = criterion(model(x), y)
    loss.backward()
    return float(loss.detach())


def train_standalone(
    make_model: Callable[[], nn.Module],
    config: dict[str, Any],
    train: TrainSpec,
    splits: Splits,
    path: Path,
    *,
    on_epoch: EpochHook | None = None,
) -> Path:
    """Train `make_model()` for `train.epochs` and cache its weights at `path` (resumable)."""
    check_train(train, splits)

    def produce() -> None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(train.seed)
            model = make_model()

        watch = monitor_set(splits.val)

        def evaluate(m: nn.Module, device: torch.device) -> dict[str, float]:
            return {"val_acc": accuracy(m, watch, device)}

        result = fit(
            model,
            train,
            splits,
            step_fn=plain_step,
            eval_fn=evaluate,
            state_path=path.with_suffix(".train.pt"),
            config={"key": path.stem, "what": "model"},
            desc=f"model {path.stem}",
            on_epoch=on_epoch,
        )
        atomic_save(
            {
                "kind": "model",
                "format": FORMAT_VERSION,
                "config": config,
                "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                "meta": result,
            },
            path,
        )
        path.with_suffix(".train.pt").unlink(missing_ok=True)

    return cached(path, produce, "model")


def train_briefly(
    model: nn.Module,
    data: Dataset,
    epochs: int,
    lr: float = 5e-4,
    batch: int = 32,
    seed: int = 0,
    amp: bool | None = None,
) -> None:
    """A few epochs of AdamW + one-cycle, plain cross-entropy, bf16 autocast where the CPU has it
    (about 2.5x faster here; the weights stay fp32): enough to give benchmarks and tests a model
    whose accuracy means something, without `fit`'s caching, resume and monitoring."""
    gen = torch.Generator().manual_seed(seed)
    loader = DataLoader(data, batch_size=batch, shuffle=True, generator=gen)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=lr, total_steps=epochs * len(loader), pct_start=0.15
    )
    if amp is None:  # tiny models are faster without: autocast's casts outweigh their matmuls
        amp = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    model.train()
    for _ in range(epochs):
        for x, y in loader:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                loss = F.cross_entropy(model(x).float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
