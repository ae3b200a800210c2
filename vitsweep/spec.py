"""Plain, frozen descriptions of one candidate: what `trial.run` consumes and returns.

These dataclasses are the only thing that crosses the doorway (`vitsweep.config`) into the rooms;
no DictConfig beyond this point. Field names mirror the config keys (`data.image_size` ->
`TrialSpec.data.image_size`) so that an error can name the key a user typed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

METRIC_NAMES = (
    "accuracy",
    "test_accuracy",
    "throughput",
    "latency_ms",
    "energy",
    "energy_source",
    "params",
    "flops",
    "model_bytes",
    "deploy_bytes",
    "peak_mem_bytes",
)

# The precisions each deployment runtime executes with its own tools (issue #34): ORT's CPU
# provider has no bf16/fp16 kernels worth timing, OpenVINO's half precisions are an inference
# hint (checked against the CPU at build time); mixed and tq are torch-only surgery.
RUNTIME_PRECISIONS: dict[str, tuple[str, ...]] = {
    "torch": ("fp32", "fp16", "bf16", "int8", "mixed", "tq"),
    "onnxruntime": ("fp32", "int8"),
    "openvino": ("fp32", "bf16", "fp16", "int8"),
}


class ConfigError(ValueError):
    """A user-facing configuration problem; the message names the key and the valid values."""


def require(ok: bool, key: str, value: Any, rule: str) -> None:
    """Raise the one-line error `key=value: rule` unless `ok` (NaN never passes a comparison)."""
    if not ok:
        raise ConfigError(f"{key}={value}: {rule}")


@dataclass(frozen=True)
class DataSpec:
    name: Literal["digits", "xray_synth", "folder"] = "digits"
    root: str | None = None  # folder: ImageFolder tree with train/ val/ [test/]
    image_size: int = 32
    in_chans: int = 3  # channels fed to the model (xray: depth slices)
    slices: int = 3  # xray_synth: depth slices rendered into channels
    samples_per_class: int = 200  # xray_synth: images per class of the pool split by fractions
    val_fraction: float = 0.2
    test_fraction: float = 0.2
    # xray_synth: val/test images drawn apart from the pool (0: split the pool by the fractions).
    # Both > 0: the whole pool trains; 7,350 images give a 95% interval of +/-0.5 pt around 95%.
    val_size: int = 0
    test_size: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        require(self.image_size >= 8, "data.image_size", self.image_size, "must be >= 8")
        require(self.in_chans >= 1, "data.in_chans", self.in_chans, "must be >= 1")
        require(self.slices >= 1, "data.slices", self.slices, "must be >= 1")
        require(
            self.samples_per_class >= 10,
            "data.samples_per_class",
            self.samples_per_class,
            "must be >= 10",
        )
        for key in ("val_fraction", "test_fraction"):
            v = getattr(self, key)
            require(0.0 < v < 0.5, f"data.{key}", v, "must be in (0, 0.5)")
        for key in ("val_size", "test_size"):
            v = getattr(self, key)
            require(v >= 0, f"data.{key}", v, "must be >= 0 (0: split the pool by fractions)")
        require(
            (self.val_size > 0) == (self.test_size > 0),
            "data.val_size",
            self.val_size,
            f"set together with data.test_size={self.test_size} (both > 0, or both 0)",
        )


@dataclass(frozen=True)
class SpaceSpec:
    """AutoFormer-style supernet search space (choices per dimension)."""

    embed_dim: tuple[int, ...] = (192, 216, 240)
    depth: tuple[int, ...] = (12, 13, 14)
    mlp_ratio: tuple[float, ...] = (3.5, 4.0)
    num_heads: tuple[int, ...] = (3, 4)
    head_dim: int = 64
    # Options of the block, not searched; the defaults are timm's ViT. AutoFormer's published
    # supernets need rel_pos=14, global_pool=avg, norm_eps=1e-5 (conf/arch/autoformer_*.yaml).
    rel_pos: int = 0  # > 0: 2-D relative position embeddings on keys/values, clipped there
    global_pool: Literal["token", "avg"] = "token"
    norm_eps: float = 1e-6
    # AutoFormer's `qkv_super` (its --change_qkv): a subnet of h heads takes the leading
    # 3 * h * head_dim entries of the qkv bias as one run, where its weight rows (and ours) take
    # each of q, k, v's leading heads; only the bias slice differs, so only it is an option.
    change_qkv: bool = False

    def __post_init__(self) -> None:
        require(self.rel_pos >= 0, "arch.space.rel_pos", self.rel_pos, "must be >= 0 (0: off)")
        require(
            self.global_pool in ("token", "avg"),
            "arch.space.global_pool",
            self.global_pool,
            "valid: token, avg",
        )
        require(0 < self.norm_eps < 1, "arch.space.norm_eps", self.norm_eps, "must be in (0, 1)")


@dataclass(frozen=True)
class ArchSpec:
    kind: Literal["vit", "supernet"] = (
        "vit"  # vit: a fixed model (standalone/loaded); supernet: a subnet
    )
    timm_name: str | None = None  # vit: a timm model name, built with random weights
    checkpoint: str | None = None  # weights on disk, used as they are; nothing downloads
    # weights to start from, then fine-tuned on the study's train split: a timm ViT state dict
    # (kind vit: for train.epochs; kind supernet: bootstrapped into the space, whose largest
    # member is that ViT) or an AutoFormer supernet (kind supernet); train.supernet_epochs
    pretrained: str | None = None
    reorder: bool = True  # bootstrap: heads/MLP units/channels most important first
    # kind supernet: the subnet then trained alone for train.epochs from its inherited weights
    # (cached), as `vitsweep-confirm finetune=K` does for the front's best
    finetune: bool = False
    img_size: int = 32
    patch_size: int = 4
    embed_dim: int = 96
    depth: int = 6
    num_heads: int | tuple[int, ...] = 3  # int, or one entry per layer
    mlp_ratio: float | tuple[float, ...] = 4.0  # float, or one entry per layer
    head_dim: int | None = None  # None: embed_dim // num_heads (timm); supernets fix it (64)
    space: SpaceSpec | None = None  # supernet: the space the subnet is drawn from

    def __post_init__(self) -> None:
        for key in ("img_size", "patch_size", "embed_dim", "depth"):
            require(getattr(self, key) >= 1, f"arch.{key}", getattr(self, key), "must be >= 1")
        require(
            self.img_size % self.patch_size == 0,
            "arch.patch_size",
            self.patch_size,
            f"must divide arch.img_size={self.img_size}",
        )
        for key in ("num_heads", "mlp_ratio"):
            v = getattr(self, key)
            values = v if isinstance(v, tuple) else (v,)
            require(all(x > 0 for x in values), f"arch.{key}", list(values), "must be > 0")
            if isinstance(v, tuple):
                require(
                    len(v) == self.depth,
                    f"arch.{key}",
                    list(v),
                    f"needs one entry per layer (arch.depth={self.depth})",
                )
        if self.head_dim is None and self.timm_name is None:
            for h in self.num_heads if isinstance(self.num_heads, tuple) else (self.num_heads,):
                require(
                    self.embed_dim % h == 0,
                    "arch.num_heads",
                    self.num_heads,
                    f"must divide arch.embed_dim={self.embed_dim} (or set arch.head_dim)",
                )
        require(
            self.checkpoint is None or self.pretrained is None,
            "arch.pretrained",
            self.pretrained,
            "set one of arch.checkpoint (used as is) and arch.pretrained (fine-tuned first)",
        )
        require(
            self.kind != "supernet" or self.space is not None,
            "arch.space",
            None,
            "arch.kind=supernet needs a search space",
        )


@dataclass(frozen=True)
class TokenSpec:
    mode: Literal["none", "tome"] = "none"
    r: int | tuple[int, ...] = 0  # tokens merged per block (int or per-block list)
    keep_ratio: float | None = (
        None  # alternative to r: fraction of tokens left after the last block
    )
    schedule: Literal["constant", "decreasing"] = "constant"  # how an int r / keep_ratio spreads
    prop_attn: bool = True
    compile_merge: bool = False  # eager inference merges through a compiled region (tome.fused)

    def __post_init__(self) -> None:
        if self.keep_ratio is not None:
            require(
                0.0 < self.keep_ratio <= 1.0,
                "token.keep_ratio",
                self.keep_ratio,
                "must be in (0, 1]",
            )


@dataclass(frozen=True)
class PrecisionSpec:
    mode: Literal["fp32", "fp16", "bf16", "int8", "mixed", "tq"] = "fp32"
    cast: Literal["autocast", "full"] = "autocast"  # fp16/bf16: autocast or a full cast
    # int8/mixed: static (calibrated on the train split) or dynamic activation scales
    int8_scheme: Literal["static", "dynamic"] = "static"
    # int8/mixed kernels: auto = torchao PT2E + inductor on x86 CPUs, int_mm on CUDA
    int8_backend: Literal["auto", "pt2e", "ao_dynamic", "int_mm"] = "auto"
    # mixed: candidate bit-widths per layer: 2..8 integer weights, 16 = bf16, 32 = fp32
    bits: tuple[int, ...] = (4, 6, 8)
    budget_kind: Literal["bytes", "bops"] = "bytes"  # mixed
    budget_ratio: float = 0.25  # mixed: budget as a fraction of the fp32 model's bytes/BOPs
    # mixed: also batch-1 latency <= this x the reference's, each layer's options timed on this
    # machine (precision/latency.py); null: bytes/BOPs only
    latency_ratio: float | None = None
    # mixed: what latency_ratio is a multiple of, timed within the trial: the fp32 model, or the
    # all-8-bit int8 program (1.0: no slower than int8 at batch 1)
    latency_reference: Literal["fp32", "int8"] = "fp32"
    # mixed: activation bits; below 8 no kernel runs them, so they are simulated for accuracy
    # (precision/act_quant.py) and the speed is the 8-bit program's, said in precision_exec
    act_bits: int = 8
    # mixed, act_bits < 8: auto = per activation the kind its distribution favours (uniform,
    # log2 after softmax, two-range after GELU); uniform = uniform everywhere
    act_quantizers: Literal["auto", "uniform"] = "auto"
    # mixed: how layers below 8 bits run: onednn = stored packed, widened to int8 when the PT2E
    # program is compiled and run by its oneDNN int8 GEMM (resident at 8 bits;
    # precision/onednn_packed.py); int_mm = stored packed, widened to int8 per call and
    # multiplied with int8 activations by torch._int_mm (resident packed;
    # precision/intmm_packed.py); int4 = aten's int4 CPU kernel at 4 bits (precision/int4.py);
    # packed = dequantized into a float GEMM (every layer a kernel does not take falls back to
    # it); auto = onednn where the 8-bit layers run in the PT2E program, else int_mm on a CPU
    low_bit_kernel: Literal["auto", "onednn", "int_mm", "int4", "packed"] = "auto"
    # mixed: the plan fixed instead of chosen, "name:bits,..." for each searched layer not at 8
    # bits ("": all at 8); no ILP, no budget. A trial records its plan as `mixed_bits`, and
    # confirm and export rebuild that plan with it: a latency budget's plan depends on timings
    # taken when it is planned, so planning again can pick another
    layer_bits: str | None = None
    calib_batches: int = 2  # mixed/tq: batches of training data for calibration
    hutchinson_samples: int = 16  # mixed: random vectors for the Hessian-trace estimate
    rate: float = 3.0  # tq: average bits per weight
    # tq: what `rate` counts: the coefficients alone, or every stored bit of the coded weights
    # (transforms, steps and depths included: the bytes a uniform quantizer is compared at)
    budget: Literal["coefficients", "stored"] = "coefficients"
    # tq: decorrelate every layer (klt), none (identity: rows coded as they are, nothing stored
    # beside them), or per layer whichever has the lower output error at the budget (auto)
    transform: Literal["klt", "identity", "auto"] = "klt"
    finetune_steps: int = 0  # tq: optional fine-tuning after quantization

    def __post_init__(self) -> None:
        require(
            0.0 < self.budget_ratio <= 1.0,
            "precision.budget_ratio",
            self.budget_ratio,
            "must be in (0, 1]",
        )
        require(
            bool(self.bits)
            and len(set(self.bits)) == len(self.bits)
            and all(2 <= b <= 8 or b in (16, 32) for b in self.bits),
            "precision.bits",
            list(self.bits),
            "need distinct bit-widths, each in 2..8, or 16 (bf16) or 32 (fp32)",
        )
        require(
            self.latency_ratio is None or self.latency_ratio > 0,
            "precision.latency_ratio",
            self.latency_ratio,
            "must be > 0 (a fraction of the fp32 model's batch-1 latency), or null",
        )
        require(
            self.latency_reference in ("fp32", "int8"),
            "precision.latency_reference",
            self.latency_reference,
            "valid: fp32, int8",
        )
        require(self.act_bits in (4, 6, 8), "precision.act_bits", self.act_bits, "valid: 4, 6, 8")
        require(
            self.act_quantizers in ("auto", "uniform"),
            "precision.act_quantizers",
            self.act_quantizers,
            "valid: auto, uniform",
        )
        require(
            self.low_bit_kernel in ("auto", "onednn", "int_mm", "int4", "packed"),
            "precision.low_bit_kernel",
            self.low_bit_kernel,
            "valid: auto, onednn, int_mm, int4, packed",
        )
        require(self.rate > 0, "precision.rate", self.rate, "must be > 0")
        require(
            self.calib_batches >= 1, "precision.calib_batches", self.calib_batches, "must be >= 1"
        )
        require(
            self.hutchinson_samples >= 1,
            "precision.hutchinson_samples",
            self.hutchinson_samples,
            "must be >= 1",
        )


@dataclass(frozen=True)
class RuntimeSpec:
    """Where the candidate runs (the `runtime` group): PyTorch itself, or exported once (dynamic
    batch) to ONNX Runtime or OpenVINO, quantized there by the runtime's own tools."""

    name: Literal["torch", "onnxruntime", "openvino"] = "torch"
    opset: int = 18  # onnx opset of the export (ToMe's scatter-add needs >= 16)

    def __post_init__(self) -> None:
        require(
            self.name in RUNTIME_PRECISIONS,
            "runtime.name",
            self.name,
            f"valid: {', '.join(RUNTIME_PRECISIONS)}",
        )
        require(self.opset >= 16, "runtime.opset", self.opset, "must be >= 16 (scatter-add)")


@dataclass(frozen=True)
class MeasureSpec:
    device: Literal["auto", "cpu", "cuda"] = "auto"
    batch_size: int = 64  # throughput batch; latency is always batch 1
    eval_batch_size: int = 256
    threads: int = 0  # 0: leave torch's default
    warmup: int = 3
    # and at least this many seconds of steps, each synchronized: a GPU's clocks ramp up over
    # its first fraction of a second under load, which a count of fast steps can fit inside
    warmup_s: float = 0.0
    min_repeats: int = 5
    max_repeats: int = 30
    max_cv: float = 0.05
    time_cap_s: float = 4.0
    repeat_s: float = 0.1  # seconds one timed repeat lasts (steps added until it does)
    energy: Literal["auto", "nvml", "rapl", "estimate"] = "auto"
    watts: float = 15.0  # estimate: assumed average power draw
    energy_window_s: float = 1.0
    lock: bool = True  # serialize timed sections of workers sharing this machine
    # torch.compile (inductor, freezing) before accuracy and timing; auto: where the precision
    # needs it (PT2E int8), always, never. Compile time is reported apart as `compile_s`.
    compile: Literal["auto", "always", "never"] = "auto"
    lock_path: str | None = None
    # run each trial in a fresh process (after training what it needs in another), so the
    # sweep's own state (training, compiled graphs, W&B) never reaches the clock
    isolate: bool = True
    # a fixed GEMM timed after every repeat (`vitsweep.measure.drift`): `record` keeps the
    # host's speed beside each timing (`host_speed`), `scale` also scales every repeat to this
    # machine's reference speed, `off` times nothing more
    host_probe: Literal["off", "record", "scale"] = "record"
    # measured: every trial timed; predicted: a candidate's throughput, latency and energy
    # come from the per-machine cost table (`vitsweep.predict.cost`), a subnet's val accuracy
    # from its supernet's evaluated subnets (`accuracy_after`); `vitsweep-confirm` then
    # measures the front (the OFA workflow)
    mode: Literal["measured", "predicted"] = "measured"
    # predicted mode: a subnet's val accuracy is evaluated (and kept beside the supernet) until
    # this many of the supernet's subnets were, then predicted by a GP fitted on them (0: always
    # evaluated). 24: on 64 xray evaluations, a GP fitted on 16 ranked the rest at Kendall tau
    # 0.49 (median of 10 draws), on 24 at 0.77, on 32 at 0.77
    accuracy_after: int = 24
    # baseline: in a sweep, every trial times the study's baseline trial (rebuilt from its
    # stored config) just before and just after its own throughput, and records its throughput
    # as the ratio to that times the baseline trial's: on a host whose speed drifts 20-30%
    # within minutes, raw readings minutes apart cannot agree within 10%, the ratio beside can
    # (`throughput_raw` keeps what the clock read); none: the clock's reading
    beside: Literal["none", "baseline"] = "none"

    def __post_init__(self) -> None:
        for key in ("batch_size", "eval_batch_size", "min_repeats"):
            require(getattr(self, key) >= 1, f"measure.{key}", getattr(self, key), "must be >= 1")
        require(
            self.accuracy_after == 0 or self.accuracy_after >= 5,
            "measure.accuracy_after",
            self.accuracy_after,
            "must be 0 (always evaluate) or >= 5 (the predictor's fit needs 5)",
        )
        require(
            self.max_repeats >= self.min_repeats,
            "measure.max_repeats",
            self.max_repeats,
            f"must be >= measure.min_repeats={self.min_repeats}",
        )
        require(self.warmup >= 0, "measure.warmup", self.warmup, "must be >= 0")
        require(self.warmup_s >= 0, "measure.warmup_s", self.warmup_s, "must be >= 0")
        require(self.repeat_s >= 0, "measure.repeat_s", self.repeat_s, "must be >= 0 (0: 1 step)")
        require(self.threads >= 0, "measure.threads", self.threads, "must be >= 0 (0: default)")
        for key in ("max_cv", "time_cap_s", "watts", "energy_window_s"):
            require(getattr(self, key) > 0, f"measure.{key}", getattr(self, key), "must be > 0")


@dataclass(frozen=True)
class TrainSpec:
    epochs: int = 10
    # supernet: its epochs (None: `epochs`). Weight sharing splits every step between several
    # subnets, so supernets train longer than one net (AutoFormer: 500 vs 300 epochs); the
    # teacher and every standalone model (the baseline) keep `epochs`.
    supernet_epochs: int | None = None
    batch_size: int = 32
    lr: float = 2e-3
    min_lr: float = 1e-5
    weight_decay: float = 0.05
    warmup_epochs: int = 1
    label_smoothing: float = 0.1
    sandwich_random: int = 2  # supernet: random subnets per step besides largest and smallest
    # supernet: "teacher" = DeiT-style soft distillation from `teacher`, a standalone ViT trained
    # (and cached) with this recipe, usually the study's baseline: every subnet learns
    # (1 - distill_weight) x labels + distill_weight x the teacher's soft predictions;
    # "inplace" = BigNAS in-place distillation (the largest subnet teaches the others with its
    # soft predictions of the same batch); "none" = every subnet learns the labels.
    distill: Literal["none", "inplace", "teacher"] = "none"
    distill_temperature: float = 1.0
    distill_weight: float = 0.5  # teacher: the soft targets' share of each subnet's loss
    teacher: ArchSpec | None = None  # teacher: its architecture (kind vit)
    threads: int = 0  # torch threads while training; 0: torch's default
    seed: int = 0
    progress: bool = True

    @property
    def supernet_schedule(self) -> int:
        """The epochs a supernet trains: `supernet_epochs`, else `epochs`."""
        return self.epochs if self.supernet_epochs is None else self.supernet_epochs

    def __post_init__(self) -> None:
        require(self.epochs >= 0, "train.epochs", self.epochs, "must be >= 0")
        require(
            self.supernet_epochs is None or self.supernet_epochs >= 0,
            "train.supernet_epochs",
            self.supernet_epochs,
            "must be >= 0, or null for train.epochs",
        )
        require(self.batch_size >= 1, "train.batch_size", self.batch_size, "must be >= 1")
        require(self.lr > 0, "train.lr", self.lr, "must be > 0")
        require(
            0 <= self.min_lr <= self.lr,
            "train.min_lr",
            self.min_lr,
            f"must be in [0, train.lr={self.lr}]",
        )
        require(self.warmup_epochs >= 0, "train.warmup_epochs", self.warmup_epochs, "must be >= 0")
        require(
            0 <= self.label_smoothing < 1,
            "train.label_smoothing",
            self.label_smoothing,
            "must be in [0, 1)",
        )
        require(
            self.sandwich_random >= 0, "train.sandwich_random", self.sandwich_random, "must be >= 0"
        )
        require(
            self.distill in ("none", "inplace", "teacher"),
            "train.distill",
            self.distill,
            "valid: none, inplace, teacher",
        )
        require(
            0 <= self.distill_weight <= 1,
            "train.distill_weight",
            self.distill_weight,
            "must be in [0, 1]",
        )
        if self.distill == "teacher":
            require(
                self.teacher is not None and self.teacher.kind == "vit",
                "train.teacher",
                None if self.teacher is None else self.teacher.kind,
                "train.distill=teacher needs a teacher architecture of kind vit "
                "(e.g. train.teacher={embed_dim: 192, depth: 6, num_heads: 3})",
            )
        require(
            self.distill_temperature > 0,
            "train.distill_temperature",
            self.distill_temperature,
            "must be > 0",
        )


@dataclass(frozen=True)
class TrackingSpec:
    """Where results are recorded (the `tracking` group)."""

    backend: Literal["wandb", "none"] = "wandb"
    project: str = "vitsweep"
    entity: str | None = None
    mode: Literal["auto", "online", "offline"] = "auto"  # auto: online only with an API key


@dataclass(frozen=True)
class Beside:
    """The study's baseline, timed beside a trial (`measure.beside=baseline`): how to rebuild
    it, and the throughput its own trial recorded (the unit the trial's throughput is read in)."""

    spec: TrialSpec
    throughput: float
    number: int  # its trial number

    def __post_init__(self) -> None:
        require(self.throughput > 0, "baseline throughput", self.throughput, "must be > 0")


@dataclass(frozen=True)
class TrialSpec:
    data: DataSpec = field(default_factory=DataSpec)
    arch: ArchSpec = field(default_factory=ArchSpec)
    token: TokenSpec = field(default_factory=TokenSpec)
    precision: PrecisionSpec = field(default_factory=PrecisionSpec)
    measure: MeasureSpec = field(default_factory=MeasureSpec)
    train: TrainSpec = field(default_factory=TrainSpec)
    runtime: RuntimeSpec = field(default_factory=RuntimeSpec)
    root: str = "multirun"  # paths.root: storage, supernets, reports
    seed: int = 0
    trial_number: int | None = None  # the Optuna trial number when run by the sweeper
    beside: Beside | None = None  # measure.beside=baseline in a sweep: the baseline to time

    def __post_init__(self) -> None:
        valid = RUNTIME_PRECISIONS[self.runtime.name]
        require(
            self.precision.mode in valid,
            "precision.mode",
            self.precision.mode,
            f"not run by runtime={self.runtime.name}; valid there: {', '.join(valid)}",
        )
        if self.runtime.name != "torch":
            require(
                self.precision.mode != "int8" or self.precision.int8_scheme == "static",
                "precision.int8_scheme",
                self.precision.int8_scheme,
                f"runtime={self.runtime.name} quantizes static int8 only; valid there: static",
            )


@dataclass
class Metrics:
    """Everything one candidate is judged by; names match DESIGN.md everywhere."""

    accuracy: float
    test_accuracy: float
    throughput: float
    latency_ms: float
    energy: float
    energy_source: str
    params: int
    flops: float
    model_bytes: int
    deploy_bytes: int  # model file(s) + the runtime's installed packages: what a station carries
    peak_mem_bytes: float  # NaN when it cannot be measured (the reason in peak_mem_source)
    extra: dict[str, Any] = field(default_factory=dict)  # throughput_cv, precision_exec, ...

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        extra = d.pop("extra")
        return {**d, **extra}
