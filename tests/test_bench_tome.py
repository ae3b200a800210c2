"""The ToMe bench's smoke run (issue #35): its variants go through the product's timing
protocol and it reports the rows and targets the issue asks for; the op-count section ranks the
readable formulation above `merge_step`, and `merge_step` above the C++ kernel. Tiny: DeiT-Ti at
112 px, fp32 eager, batch 2, one thread (two stall under load), one round, no compiled merge
region (quick): no figure in it is evidence of speed."""

from __future__ import annotations

from vitsweep.bench import tome


def test_smoke_run_reports_batch_1_rows_targets_and_op_counts() -> None:
    speed, ops = tome.run(quick=True, models=("DeiT-Ti",), precisions=("fp32",), batch=2, img=112)
    rows = {(r["r"], r["batch"], r["merge"]): r for r in speed.rows}
    assert set(rows) == {
        (0, 2, "-"),
        (0, 1, "-"),
        (tome.R, 2, "eager (C++ kernel)"),
        (tome.R, 1, "eager (C++ kernel)"),
        (tome.R, 1, "eager (merge_step)"),
    }
    # 112 px: 50 tokens; r=13 is capped at half the unprotected tokens per block
    assert rows[(tome.R, 1, "eager (C++ kernel)")]["final_tokens"] == 2
    assert rows[(tome.R, 1, "eager (merge_step)")]["final_tokens"] == 2
    assert rows[(0, 1, "-")]["final_tokens"] == 50
    assert all(r["images_per_s"] > 0 and r["x_flops"] > 1 for r in speed.rows if r["r"])
    # quick builds no compiled merge region: two ToMe rows at batch 1 (the kernel, op by op),
    # the kernel's read against stock
    assert sum(1 for r in speed.rows if r["batch"] == 1 and r["r"] == tome.R) == 2
    assert [t.name for t in speed.targets] == [f"DeiT-Ti fp32 b=1: ToMe r={tome.R} / stock"]
    by = {(r["formulation"], r["dtype"], r["batch"]): r for r in ops.rows}
    for dtype, batch in (("float32", 1), ("float32", tome.BATCH), ("bfloat16", 1)):
        readable = by[("readable (merge_wavg)", dtype, batch)]
        fast = by[("merge_step eager", dtype, batch)]
        assert fast["torch_calls"] < readable["torch_calls"]
        assert fast["aten_ops"] < readable["aten_ops"]
        # the kernel dispatches only its matching's ops, from C++
        assert by[("C++ kernel (fused_merge)", dtype, batch)]["aten_ops"] < fast["aten_ops"]
