"""ToMe's matching and merging as one step, at a fraction of the dispatcher calls (issue #35).

`merge.bipartite_soft_matching` + `merge.merge_wavg` are the readable formulation; at batch 1
their ~70 small torch calls per merging block (each a Python -> dispatcher round trip) cost more
than the merged tokens save. The same published algorithm (see `merge`'s docstring), two ways:

- `merge_step`: one eager function with fewer calls. Rows are addressed by their flat index in
  (batch * tokens, channels), taken from one `arange` grid, so every index is one `gather` and no
  batch offsets are added; the merged A tokens and their receiving B tokens are read with one
  `index_select`, and the receivers' size-weighted sums are one `baddbmm` (the small "same
  receiver" matrix, as in `merge_wavg`). Only the <= r receivers per image are recomputed,
  every other row is copied exactly.
- the C++ kernel (`merge_kernel.cpp`, on by default for eager CPU inference): the same
  matching, by the same ATen ops called from C++, then the merge as loops over rows. At batch 1
  the ~54 ops of `merge_step` cost more than the merged tokens save (216 us per DeiT-Ti bf16
  block at 184 tokens, AMD EPYC, 2 threads); no op-level rewrite removes enough of them. Built once
  per machine by `torch.utils.cpp_extension` (about a minute, cached in its extensions
  directory); where it cannot be built (no C++ compiler), `merge_step`, with one warning.
- `fused_merge` (opt-in, `token.compile_merge`; see below): `merge_step` compiled on its own
  (regional compilation, inductor, dynamic shapes, so every block's token count shares one
  graph) and called from an eager model: one
  call per block instead of ~60. Only where that is safe and pays: no autograd (inference), not
  already inside torch.compile / torch.export (the whole-model graph traces `merge_step`
  itself), no Python dispatch or function mode active (FLOP counting, op counting), and never
  again after a failed compile (no C++ compiler: eager, with one warning).
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import torch
from torch.overrides import _get_current_function_mode_stack
from torch.utils._python_dispatch import _get_current_dispatch_mode

from vitsweep.tome.merge import _sets, max_merge

Extras = tuple[torch.Tensor, ...]


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Sizes and the receivers' sums in float32 at least: bf16 counts exactly only up to 256."""
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def merge_step(
    metric: torch.Tensor,
    x: torch.Tensor,
    size: torch.Tensor | None,
    r: int,
    num_prefix: int,
    extras: Extras = (),
) -> tuple[torch.Tensor, torch.Tensor, Extras]:
    """Match on `metric` (batch, tokens, features) and merge `x` (batch, tokens, channels) and
    each of `extras` (batch, tokens, k) by size-weighted average: (x, size, extras), the output
    `[prefix | unmerged A | B]` exactly as `merge_wavg(bipartite_soft_matching(...))`.

    `size` (batch, tokens, 1) or None (all ones); the returned size is float32 at least.
    """
    batch, n, _ = x.shape
    p = num_prefix
    r = max(min(r, max_merge(n, p)), 0)
    acc = _acc_dtype(x.dtype)
    if r == 0:
        if size is None:
            size = torch.ones(batch, n, 1, dtype=acc, device=x.device)
        return x, size, extras
    first_a, first_b, num_a = _sets(n, p)
    m = n - r
    with torch.no_grad():  # indices carry no gradient; scores in float32 at least
        k = metric if metric.dtype in (torch.float32, torch.float64) else metric.float()
        k = k / k.norm(dim=-1, keepdim=True).clamp_min(1e-12)  # F.normalize, fewer calls
        best, best_b = (k[:, first_a::2] @ k[:, first_b::2].mT).max(dim=-1)
        order = best.argsort(dim=-1, descending=True)
        src_a, unm_a = order[:, :r], order[:, r:]
        if p > 0:  # back to position order: the prefix stays first, neighbours stay adjacent
            unm_a = unm_a.sort(dim=-1).values  # (sorting a view of `order`: no copy compiled)
        grid = torch.arange(batch * n, device=x.device).view(batch, n)  # every token's flat row
        grid_a, grid_b = grid[:, first_a::2], grid[:, first_b::2]
        unm = grid_a.gather(1, unm_a)
        keep = torch.cat([grid[:, :p], unm, grid_b] if p > 0 else [unm, grid_b], dim=1)
        dst_b = best_b.gather(1, src_a)  # the B token each merged A token goes to
        picked = torch.cat([grid_a.gather(1, src_a), grid_b.gather(1, dst_b)], dim=1).view(-1)
        # the receivers' flat rows in the output: B tokens follow prefix and unmerged A
        first_out = torch.arange(p + num_a - r, batch * m, m, device=x.device)
        dst = (dst_b + first_out.unsqueeze(1)).view(-1)
        same = (dst_b.unsqueeze(2) == dst_b.unsqueeze(1)).to(acc)  # (batch, r, r)
        keep = keep.view(-1)

    # the sums in `acc`, as written: autocast would run baddbmm in bf16 (sizes too)
    dev = x.device.type
    with torch.autocast(dev, enabled=False) if torch.is_autocast_enabled(dev) else _NO_CTX:
        return _merge_rows(x, size, extras, keep, picked, dst, same, r, acc)


_NO_CTX = contextlib.nullcontext()


def _merge_rows(
    x: torch.Tensor,
    size: torch.Tensor | None,
    extras: Extras,
    keep: torch.Tensor,
    picked: torch.Tensor,
    dst: torch.Tensor,
    same: torch.Tensor,
    r: int,
    acc: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor, Extras]:
    """`merge_step`'s second half: copy the kept rows, recompute the receivers (flat rows)."""
    batch, n, _ = x.shape
    m = keep.shape[0] // batch
    if size is None:
        size_rows = torch.ones(batch * n, 1, dtype=acc, device=x.device)
    else:
        size_rows = size.reshape(batch * n, 1)
    out_size = size_rows.index_select(0, keep)
    pick_s = size_rows.index_select(0, picked).view(batch, 2 * r, 1)
    src_s, recv_s = pick_s.split(r, dim=1)
    # receiver's size plus its sources' (a matmul with one column: inductor fuses it, where a
    # baddbmm would stay a library call of its own)
    new_s = recv_s + same @ src_s

    def merged(t: torch.Tensor) -> torch.Tensor:
        """`t` (batch, n, ch): rows copied to [prefix | unmerged A | B], receivers averaged."""
        ch = t.shape[-1]
        rows = t.reshape(batch * n, ch)
        out = rows.index_select(0, keep)
        pick = rows.index_select(0, picked).view(batch, 2 * r, ch)
        pick = (pick if pick.dtype == acc else pick.to(acc)) * pick_s
        src, recv = pick.split(r, dim=1)
        new = (torch.baddbmm(recv, same, src) / new_s).view(batch * r, ch)
        # a receiver chosen twice gets the same row twice
        out.index_copy_(0, dst, new if new.dtype == t.dtype else new.to(t.dtype))
        return out.view(batch, m, ch)

    out_size.index_copy_(0, dst, new_s.view(batch * r, 1))
    return merged(x), out_size.view(batch, m, 1), tuple(merged(e) for e in extras)


# Off unless asked (`token.compile_merge: true`): measured quiet on the Xeon @2.80GHz (AVX512-VNNI,
# no AMX; DeiT-Ti fp32 eager, r=13, 2 threads, load 0.7-1.8, two runs of `bench.tome`), the region
# did not pay at batch 1: 26.67 ms against 24.82 eager, then 31.18 against 31.28 (stock 23.25 and
# 27.50), while each process pays its compile (22 s here, 20-60 s cold). Batch 16 with it on:
# 1.34-1.37x stock. Opt in where a bench shows it pays on that CPU.
_compiled: Callable[..., tuple[torch.Tensor, torch.Tensor, Extras]] | None = None
# override: `regional`'s forced choice (None: each model's own); failed: a compile failed once;
# kernel: whether eager inference merges in the C++ kernel (`kernel`); kernel_failed: its build
# failed once
_state: dict[str, bool | None] = {
    "override": None,
    "failed": False,
    "kernel": True,
    "kernel_failed": False,
}
_built: ModuleType | None = None


def _region() -> Callable[..., tuple[torch.Tensor, torch.Tensor, Extras]]:
    """`merge_step` compiled once per process, lazily (importing ToMe compiles nothing).
    Dynamic shapes: the token count changes from block to block, the batch from call to call;
    a static graph per count would recompile at every block and hit dynamo's cache limit."""
    global _compiled
    if _compiled is None:
        _compiled = torch.compile(merge_step, dynamic=True, backend="inductor")
    return _compiled


def _eager_inference() -> bool:
    """No trace, no autograd, no Python dispatch or function mode: where a merge may leave the
    op-by-op formulation (module docstring)."""
    # is_compiling first: inside a whole-model trace nothing after it is traced (or guarded on)
    return (
        not torch.compiler.is_compiling()
        and not torch.is_grad_enabled()
        and _get_current_dispatch_mode() is None
        and not _get_current_function_mode_stack()
    )


def _region_applies(requested: bool) -> bool:
    """Whether this merge runs through the compiled region: what the model asked for
    (`token.compile_merge`) unless `regional` forces a choice, never after a failed compile,
    and only where it is safe (module docstring)."""
    override = _state["override"]
    enabled = requested if override is None else override
    return bool(enabled) and not _state["failed"] and _eager_inference()


def built_kernel() -> ModuleType | None:
    """The C++ merge kernel, built on first use (None where it cannot be built: one warning,
    then `merge_step` for the rest of the process)."""
    global _built
    if _built is None and not _state["kernel_failed"]:
        from torch.utils import cpp_extension

        source = Path(__file__).with_name("merge_kernel.cpp")
        try:
            import ninja  # torch builds with the ninja on PATH: the venv's may not be there

            path = os.environ.get("PATH", "")
            if ninja.BIN_DIR not in path.split(os.pathsep):
                os.environ["PATH"] = os.pathsep.join([ninja.BIN_DIR, path])
            _built = cpp_extension.load(
                "vitsweep_tome_merge", [str(source)], extra_cflags=["-O3"], verbose=False
            )
        except Exception as err:  # no compiler, no ninja, a failed build: no common type
            _state["kernel_failed"] = True
            warnings.warn(
                f"ToMe's merge kernel could not be built ({type(err).__name__}: "
                f"{str(err)[:200]}); merging with merge_step",
                RuntimeWarning,
                stacklevel=3,
            )
    return _built


def _kernel_applies(x: torch.Tensor, metric: torch.Tensor) -> bool:
    """Eager CPU inference on plain tensors, not under a tracer: what the kernel computes in
    its loops is invisible to torch.jit.trace, torch.export and fake or functional tensors."""
    return (
        not torch.compiler.is_compiling()  # first: nothing after it is traced or guarded on
        and bool(_state["kernel"])
        and type(x) is torch.Tensor
        and type(metric) is torch.Tensor
        and x.device.type == "cpu"
        and not torch.jit.is_tracing()
        and not torch.compiler.is_exporting()
        and _eager_inference()
    )


def fused_merge(
    metric: torch.Tensor,
    x: torch.Tensor,
    size: torch.Tensor | None,
    r: int,
    num_prefix: int,
    extras: Extras = (),
    compile: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, Extras]:
    """`merge_step`, through its compiled region where asked (`compile`) and where that
    applies, else in eager CPU inference through the C++ kernel (module docstring)."""
    if not _region_applies(compile):
        r = min(r, max_merge(x.shape[1], num_prefix))
        if r > 0 and _kernel_applies(x, metric) and (built := built_kernel()) is not None:
            out, new_size, *rest = built.merge_step(metric, x, size, r, num_prefix, list(extras))
            return out, new_size, tuple(rest)
        return merge_step(metric, x, size, r, num_prefix, extras)
    if size is None:  # one graph for every block: the first merging block gets ones too
        size = torch.ones(*x.shape[:2], 1, dtype=_acc_dtype(x.dtype), device=x.device)
    try:
        return _region()(metric, x, size, r, num_prefix, extras)
    except Exception as err:  # inductor's failures (no compiler, lowering) share no type
        _state["failed"] = True
        warnings.warn(
            f"ToMe's compiled merge failed ({type(err).__name__}: {str(err)[:200]}); "
            "merging eagerly from now on",
            RuntimeWarning,
            stacklevel=2,
        )
        return merge_step(metric, x, size, r, num_prefix, extras)


@contextlib.contextmanager
def kernel(enabled: bool) -> Iterator[None]:
    """Merge in eager inference with the C++ kernel (the default) or op by op (`merge_step`)
    inside: for tests and the bench, which compare both on one model."""
    before = _state["kernel"]
    _state["kernel"] = enabled
    try:
        yield
    finally:
        _state["kernel"] = before


@contextlib.contextmanager
def regional(enabled: bool | None) -> Iterator[None]:
    """Use (or not) the compiled region inside, whatever each model's `token.compile_merge`
    says (None: as it says): for tests and the bench, which compare both on one model."""
    before = _state["override"]
    _state["override"] = enabled
    try:
        yield
    finally:
        _state["override"] = before
