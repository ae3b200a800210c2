"""int8 on PyTorch's maintained x86 path: torchao PT2E, then inductor.

The flow (torchao 0.18, `torchao.quantization.pt2e`): `torch.export` the float model with a
dynamic batch dimension -> `prepare_pt2e` with `X86InductorQuantizer` (per-channel symmetric
int8 weights, per-tensor affine uint8 activations; static by default, dynamic as an option) ->
calibrate on a few train-split batches (static only) -> `convert_pt2e`. What comes out is an FX
GraphModule of reference quantize/dequantize ops around fp32 linears; run eagerly it is only a
numerical model of int8 (slower than fp32). `torch.compile` with inductor freezing
(`vitsweep.measure.compile`) pattern-matches q/dq + linear into oneDNN int8 GEMMs (VNNI/AMX):
that compiled program is what a trial times and what `vitsweep-export` ships (`.pt2`).

Why not eager `torch.ao` (still in `int8.py`): deprecated, and 3x slower than this path on a CPU
with AMX-INT8 (ViT-S/16 batch 16: 1.3-1.8x fp32 vs about 4x). It stays as the labelled fallback
for models torch.export cannot capture and devices inductor's x86 lowering does not cover.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from operator import attrgetter
from pathlib import Path

import torch
from torch import nn

PT2E_TARGETS = "x86-inductor"
PROGRAM_ATTR = "vitsweep_program"  # the torch.export ExportedProgram a PT2E model was made from


def pt2e_available(device: str) -> bool:
    """torchao's PT2E flow is importable and `device` is a CPU with oneDNN (x86 int8 lowering)."""
    if torch.device(device).type != "cpu" or not torch.backends.mkldnn.is_available():
        return False
    try:
        import torchao.quantization.pt2e.quantize_pt2e  # noqa: F401
    except ImportError:
        return False
    return True


def _quantizer(dynamic: bool, module_names: Sequence[str] | None):
    import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq

    config = xiq.get_default_x86_inductor_quantization_config(is_dynamic=dynamic)
    quantizer = xiq.X86InductorQuantizer()
    if module_names is None:
        # Linear layers only: the patch-embed conv (1 of 50 weight layers, 0.3% of a ViT-S's
        # FLOPs) stays fp32 because inductor's qconv prepack fails under a dynamic batch
        # dimension (UnsupportedOperatorException: onednn.qconv_prepack), and a dynamic batch
        # is what lets one compiled graph serve every batch size.
        return quantizer.set_module_type_qconfig(nn.Linear, config)
    for name in module_names:  # mixed: only its 8-bit layers; everything else stays as it is
        quantizer.set_module_name_qconfig(name, config)
    return quantizer


def _fold_weight_quantize(gm: torch.fx.GraphModule) -> int:
    """Quantize, once and for good, every weight `convert_pt2e` left quantizing at run time;
    returns how many. Ours because torchao's folder is wrong for in-place ops on activations:
    `constant_fold` treats every producer of a `copy_`/`put_` target that descends from an
    input as a mutable buffer and folds none of them (torchao 0.18,
    `ConstantFolder._find_mutable_buffers`). ToMe's merge writes its receivers back with
    `index_copy_`, so every Linear before the first merge kept its fp32 weight (4x its int8
    bytes in the program and the shipped `.pt2`) and requantized it on each eager forward.
    Only a quantize op whose every input is a stored tensor is folded: an activation's never is.
    """
    from torchao.quantization.pt2e.constant_fold import replace_node_with_constant
    from torchao.quantization.pt2e.quantize_pt2e import _quant_node_constraint

    folded = 0
    for node in list(gm.graph.nodes):
        if not _quant_node_constraint(node):
            continue
        inputs = [a for a in node.args if isinstance(a, torch.fx.Node)]
        if not inputs or any(a.op != "get_attr" for a in inputs):
            continue
        args = [
            attrgetter(str(a.target))(gm) if isinstance(a, torch.fx.Node) else a for a in node.args
        ]
        replace_node_with_constant(gm, node, node.target(*args, **node.kwargs))
        folded += 1
    if folded:
        gm.graph.eliminate_dead_code()
        gm.recompile()
    return folded


def _prune_unused(gm: torch.fx.GraphModule) -> None:
    """Drop the float weights `convert_pt2e` left behind: the graph reads their int8 copies
    (`_frozen_param*`), so keeping them would double what the model stores and ships."""
    used = {str(n.target) for n in gm.graph.nodes if n.op == "get_attr"}
    names = [n for n, _ in gm.named_parameters(remove_duplicate=False)]
    names += [n for n, _ in gm.named_buffers(remove_duplicate=False)]
    for name in names:
        if name in used:
            continue
        parent_name, _, leaf = name.rpartition(".")
        parent = gm.get_submodule(parent_name) if parent_name else gm
        if leaf in parent._parameters:
            del parent._parameters[leaf]
        elif leaf in parent._buffers:
            del parent._buffers[leaf]


def quantized_layers(gm: torch.fx.GraphModule) -> dict[str, int]:
    """How many linear / conv ops read a dequantized int8 weight, by kind."""
    counts = {"Linear": 0, "Conv": 0}
    dq = "dequantize_per_channel"
    for node in gm.graph.nodes:
        if node.op != "call_function" or len(node.args) < 2:
            continue
        target = str(node.target)
        weight = node.args[1]
        if not isinstance(weight, torch.fx.Node) or dq not in str(weight.target):
            continue
        if "linear" in target:
            counts["Linear"] += 1
        elif "conv" in target:
            counts["Conv"] += 1
    return counts


def pt2e_bytes(model: nn.Module) -> int:
    """What `quantize_pt2e(model)` stores (`model_bytes` of its program), counted on the float
    model without exporting it (~5 s for an xray subnet): every Linear's fp32 weight becomes
    int8 with a per-channel fp32 scale and int64 zero point; everything else stays as it is.
    Holds for the default quantizer (every Linear, `_fold_weight_quantize` applied); a test
    checks it against the program's own count, ToMe included."""
    from vitsweep.precision.bytes import model_bytes

    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if any(m.weight.dtype != torch.float32 for m in linears):
        raise ValueError("pt2e_bytes: counts a float32 model, as quantize_pt2e takes it")
    weights = sum(m.weight.numel() for m in linears)
    channels = sum(m.out_features for m in linears)
    fp32, int8, qparams = 4, 1, 4 + 8  # bytes per weight; per output channel: scale, zero point
    return model_bytes(model) - (fp32 - int8) * weights + qparams * channels


def quantize_pt2e(
    model: nn.Module,
    batches: Iterable[torch.Tensor | tuple[torch.Tensor, ...]],
    *,
    dynamic: bool = False,
    module_names: Sequence[str] | None = None,
    program: bool = True,
) -> torch.fx.GraphModule:
    """The PT2E int8 program of `model` (eval mode, on CPU): exported on the first batch with a
    dynamic batch dimension, calibrated on every batch (static), converted, unused floats pruned.
    A batch is one input tensor, or a tuple of a model's arguments (tensors or tuples of them).

    `module_names`: quantize only these submodules (qualified names); None: every Linear/Conv
    X86InductorQuantizer supports. Raises whatever torch.export raises for an uncapturable model.
    `program=False`: the converted graph as `simulated` makes it, for evaluating accuracy only:
    the same weights, scales and zero points, not exported again (0.8-1.7 s) and never compiled.
    """
    from torch.export import Dim
    from torch.utils._pytree import tree_map
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    batches = [b if isinstance(b, tuple) else (b,) for b in batches]
    # Parameters as deployed, before export flattens the modules that say how many they hold
    # as buffers (mixed's packed layers): count_params reads them back from `buffered_params`.
    params = sum(p.numel() for p in model.parameters())
    params += sum(int(getattr(m, "buffered_params", 0)) for m in model.modules())
    if not batches:
        raise ValueError("quantize_pt2e: needs at least one input batch (the export example)")
    model.eval()
    with torch.no_grad():
        example = batches[0]
        shapes = tree_map(lambda _: {0: Dim.AUTO}, example)  # every tensor's dim 0
        exported = torch.export.export(model, example, dynamic_shapes=shapes)
        prepared = prepare_pt2e(exported.module(), _quantizer(dynamic, module_names))
        # Observers record activation ranges (static) and, in both schemes, the per-channel
        # weight ranges: without one forward a weight observer has seen nothing, and convert
        # falls back to a single scale per tensor. Dynamic needs no more than that one batch.
        for args in batches if not dynamic else batches[:1]:
            prepared(*args)
        converted = convert_pt2e(prepared)
        _fold_weight_quantize(converted)
        _prune_unused(converted)
        if program:
            # Exported once more: the trial runs, and vitsweep-export saves, this very program.
            module = program_module(torch.export.export(converted, example, dynamic_shapes=shapes))
        else:
            module = _inference_only(simulated(converted))
    module.buffered_params = params - sum(p.numel() for p in module.parameters())
    return module


def simulated(gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """`gm` with every activation's quantize -> dequantize pair (per tensor, scale and zero
    point as numbers) replaced by `requantized`: the same float32 ops in the same order, so
    the same values bit for bit, without the eight tensors `quantized_decomposed` allocates
    per pair. Ours because torch keeps reference q/dq as the only eager form of a converted
    program, and its fused `fake_quantize_per_tensor_affine` is a scalar loop, as slow as the
    pair (256x65x384 floats, AMD EPYC: pair 25-30 ms, fake_quantize 18-25 ms, this 6.5 ms).
    Weights keep their int8 storage and per-channel dequantize, so size and parameter counts
    stay the program's. In place; returned."""
    q = torch.ops.quantized_decomposed
    graph = gm.graph
    for node in list(graph.nodes):
        if node.target is not q.dequantize_per_tensor.default or node.kwargs.get("out_dtype"):
            continue
        source = node.args[0]
        if getattr(source, "target", None) is not q.quantize_per_tensor.default:
            continue
        if tuple(source.args[1:6]) != tuple(node.args[1:6]):  # requantized with other params
            continue
        with graph.inserting_before(node):
            fused = graph.call_function(requantized, (source.args[0], *source.args[1:5]))
        fused.meta = dict(node.meta)
        node.replace_all_uses_with(fused)
        graph.erase_node(node)
    graph.eliminate_dead_code()
    gm.recompile()
    return gm


def requantized(
    x: torch.Tensor, scale: float, zero_point: int, quant_min: int, quant_max: int
) -> torch.Tensor:
    """dequantize_per_tensor(quantize_per_tensor(x, ...)) of `quantized_decomposed`, in place on
    one new tensor: round(x / scale) + zero point, clamped, minus the zero point, times scale.
    The integer dtype between the two is left out: every value it held is an integer in
    [quant_min, quant_max], which float32 holds exactly."""
    out = torch.mul(x.float(), 1.0 / scale).round_().add_(zero_point)
    return out.clamp_(quant_min, quant_max).sub_(zero_point).mul_(scale)


def load_program(file: str | Path) -> torch.fx.GraphModule:
    """A `.pt2` PT2E program back from disk, runnable (`program_module`)."""
    # The program's own ops must be registered before torch.export.load can resolve them:
    # importing the PT2E flow registers its quantize/dequantize ops (quantized_decomposed::*),
    # importing intmm_packed the op mixed's low-bit layers keep their packed codes behind,
    # which compiling the program must then not fold into int8 weights.
    import torchao.quantization.pt2e.quantize_pt2e  # noqa: F401

    from vitsweep.precision.intmm_packed import never_fold_held

    never_fold_held()
    return program_module(torch.export.load(str(file)))


def program_module(program: torch.export.ExportedProgram) -> torch.fx.GraphModule:
    """The runnable module of a PT2E program (also of one loaded from a `.pt2` file)."""
    module = _inference_only(program.module())
    # int8 weights are buffers (`_frozen_param*`), not parameters: count_params adds them here.
    module.buffered_params = sum(  # type: ignore[assignment]
        b.numel() for b in module.buffers() if b.dtype == torch.int8
    )
    setattr(module, PROGRAM_ATTR, program)
    return module


def _inference_only(module: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """An exported (or converted) module that only infers, in eval mode for good."""
    from torchao.quantization.pt2e import allow_exported_model_train_eval

    # Exported modules refuse .eval()/.train() unless told how to map them (dropout off/on);
    # every measurement toggles eval mode, so allow it.
    allow_exported_model_train_eval(module)
    # An exported module starts with training=True, and torchao's patched .eval() leaves the
    # flag alone: then eval_mode() would "restore" training after each measurement, and
    # torchao's train rewrite turns dropout(p=0) into dropout(p=0.5) (seen here: compiled
    # logits off by 0.6). This module only infers: mark it eval for good.
    if _infers_already(module):
        # torchao's .eval() rewrite exports 6 pattern graphs to find training-mode dropout and
        # batch norm (0.6-1.3 s of every int8 program); a program exported in eval mode has
        # none to find, so only its flag is set, as that rewrite would leave it.
        setattr(module, _EXPORTED_TRAINING_ATTR, False)
    module.eval()
    for sub in module.modules():
        sub.training = False
    return module


# torchao's mark on an exported module (`export_utils._EXPORTED_TRAINING_ATTR`), private: were
# it renamed, .eval() would only run its rewrite again, slower and still right.
_EXPORTED_TRAINING_ATTR = "_exported_training"


def _infers_already(gm: torch.fx.GraphModule) -> bool:
    """No op in the graph that behaves differently in training: every dropout exported with
    train=False, no batch norm that updates its statistics."""
    aten = torch.ops.aten
    for node in gm.graph.nodes:
        if node.op != "call_function":
            continue
        if node.target in (aten.dropout.default, aten.native_dropout.default):
            train = node.args[2] if len(node.args) > 2 else node.kwargs.get("train")
            if train is not False:
                return False
        elif "batch_norm" in str(node.target) and "no_training" not in str(node.target):
            return False
    return True


def label(gm: torch.fx.GraphModule, dynamic: bool) -> str:
    """precision_exec of a PT2E program before compilation, e.g.
    'int8 static pt2e x86-inductor, 49 Linear + 1 Conv'."""
    counts = quantized_layers(gm)
    parts = [f"{counts['Linear']} Linear"] + ([f"{counts['Conv']} Conv"] if counts["Conv"] else [])
    scheme = "dynamic" if dynamic else "static"
    return f"int8 {scheme} pt2e {PT2E_TARGETS}, " + " + ".join(parts)
