"""The runtime axis (issue #34): ONNX Runtime and OpenVINO run the candidate torch measured.

A tiny timm ViT with ToMe (r > 0, so the matching and merging are exported too) goes through the
product's own `runtime.deploy`; outputs are compared with torch on the same inputs, int8 with
the fp32 predictions on real images (scikit-learn's digits), and one trial runs end to end
through `trial.run` with `runtime=onnxruntime`.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from tests.conftest import tiny_vit
from vitsweep import runtime
from vitsweep.spec import PrecisionSpec, RuntimeSpec, TokenSpec
from vitsweep.tome import apply_token

RUNTIMES = ["onnxruntime", "openvino"]


def _tome_vit() -> torch.nn.Module:
    return apply_token(tiny_vit(), TokenSpec(mode="tome", r=2))


def _images(dataset, n: int) -> torch.Tensor:
    return torch.stack([dataset[i][0] for i in range(n)])


def max_relative_difference(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out - ref).abs().max() / ref.abs().max())


@pytest.mark.parametrize("name", RUNTIMES)
def test_fp32_matches_torch_with_tome_at_batch_1_and_3_from_one_export(
    name: str, digits16, one_thread
):
    model = _tome_vit()
    deployed, ctx = runtime.deploy(
        copy.deepcopy(model), RuntimeSpec(name=name), PrecisionSpec(), calib=digits16.train,
        threads=1,
    )  # fmt: skip
    assert ctx.precision_exec.startswith(name) and "fp32" in ctx.precision_exec
    assert len([f for f in deployed.deployed.files if f.suffix in (".onnx", ".xml")]) == 1
    x = _images(digits16.test, 3)
    with torch.inference_mode():
        ref = model(x)
        for batch in (1, 3):  # the one file's batch dimension is dynamic
            diff = max_relative_difference(ctx.forward(deployed, x[:batch]), ref[:batch])
            print(f"{name} fp32 batch {batch}: max relative difference {diff:.2e}")
            assert diff <= 1e-4


@pytest.fixture(scope="module")
def fp32_predictions(digits16) -> np.ndarray:
    model = _tome_vit()
    with torch.inference_mode():
        return model(_images(digits16.test, len(digits16.test))).argmax(1).numpy()


@pytest.mark.parametrize("name", RUNTIMES)
def test_int8_by_the_runtimes_own_quantizer_agrees_with_fp32(
    name: str, digits16, fp32_predictions, one_thread
):
    deployed, ctx = runtime.deploy(
        _tome_vit(), RuntimeSpec(name=name), PrecisionSpec(mode="int8"), calib=digits16.train,
        threads=1,
    )  # fmt: skip
    tool = {"onnxruntime": "QDQ int8", "openvino": "NNCF int8"}[name]
    assert ctx.precision_exec.startswith(name) and tool in ctx.precision_exec, ctx.precision_exec
    with torch.inference_mode():
        x = _images(digits16.test, len(digits16.test))
        pred = ctx.forward(deployed, x).argmax(1).numpy()
    agree = float((pred == fp32_predictions).mean())
    print(f"{name} int8: {agree:.3f} of {len(pred)} predictions equal to fp32's")
    assert agree >= 0.9
    assert runtime.stored_bytes(deployed) > 0


def test_a_model_that_cannot_be_exported_fails_with_the_reason(digits16):
    class Untraceable(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.sum() > 0:  # data-dependent control flow: torch.export refuses it
                return x.flatten(1)[:, :10]
            return -x.flatten(1)[:, :10]

    with pytest.raises(runtime.ExportFailed, match=r"torch\.onnx\.export \(dynamo\) failed: "):
        runtime.deploy(
            Untraceable(), RuntimeSpec(name="onnxruntime"), PrecisionSpec(), calib=digits16.train,
            threads=1,
        )  # fmt: skip


# ------------------------------------------------------------- through the product's trial path


@pytest.fixture(scope="module")
def trials(tmp_path_factory) -> dict[str, tuple]:
    """One smoke trial per runtime (same cached weights, ToMe r=2, fp32): spec, resolved
    config and the metrics `trial.run` returned."""
    from vitsweep import config, trial

    root = tmp_path_factory.mktemp("runtime-trials")
    out = {}
    for name in ("torch", "onnxruntime", "openvino"):
        overrides = ["experiment=smoke", "tracking=none", f"paths.root={root}", "token.r=2"]
        cfg = config.compose([*overrides, f"runtime={name}"])
        spec = config.trial_spec(cfg)
        out[name] = (spec, config.trial_config(cfg), trial.run(spec).as_dict())
    return out


def test_installed_bytes_are_kept_per_installed_versions(tmp_path) -> None:
    """Every trial's fresh process reads the runtime's installed bytes from `<root>/host/`
    rather than walking torch's files again; what it reads is what walking them counts."""
    import json

    from vitsweep.measure.deploy import _distribution_bytes, installed_bytes, requirement_closure

    walked = sum(_distribution_bytes(n) for n in requirement_closure(("numpy",)))
    assert installed_bytes(("numpy",), tmp_path) == walked > 0
    kept = json.loads((tmp_path / "installed-bytes.json").read_text())
    from importlib import metadata

    versions = " ".join(f"{n}=={metadata.version(n)}" for n in requirement_closure(("numpy",)))
    assert kept == {versions: walked} and f"numpy=={np.__version__}" in versions
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "installed-bytes.json").write_text("{")
    assert installed_bytes(("numpy",), damaged) == walked  # counted again, and kept
    assert json.loads((damaged / "installed-bytes.json").read_text()) == kept


@pytest.mark.slow
def test_an_onnxruntime_trial_records_deploy_bytes_compile_s_and_per_image_results(trials):
    from vitsweep.measure.accuracy import TEST_FLAGS_KEY, paired_difference, unpack_flags
    from vitsweep.measure.deploy import installed_bytes, requirement_closure

    m, base = trials["onnxruntime"][2], trials["torch"][2]
    assert m["runtime"] == "onnxruntime" and base["runtime"] == "torch"
    assert m["precision_exec"].startswith("onnxruntime ") and "fp32" in m["precision_exec"]
    assert m["compile_s"] > 0  # export + session: a cost of its own, outside throughput
    assert m["model_bytes"] >= 4 * m["params"]  # every fp32 weight is in the ONNX file
    assert "numpy" in requirement_closure(("onnxruntime",))
    assert m["deploy_bytes"] == m["model_bytes"] + installed_bytes(("onnxruntime",))
    assert base["deploy_bytes"] == base["model_bytes"] + installed_bytes(("torch",))

    flags = {
        k: unpack_flags(t[TEST_FLAGS_KEY], t["test_accuracy_n"])
        for k, t in (("ort", m), ("pt", base))
    }
    assert flags["ort"].mean() == m["test_accuracy"]
    # the same images, so the paired difference works across runtimes; fp32 on both sides
    # differs at most on near-ties
    paired = paired_difference(flags["ort"], flags["pt"])
    print(f"onnxruntime - torch fp32, test: {paired}")
    assert paired.n == len(flags["pt"]) and paired.a_only + paired.b_only <= max(1, paired.n // 100)


@pytest.mark.slow
@pytest.mark.parametrize("name", RUNTIMES)
def test_the_exported_artefact_loads_without_torch_and_reproduces_test_accuracy(
    name: str, trials, tmp_path
):
    import subprocess
    import sys

    from vitsweep.export import export_trial

    spec, cfg, metrics = trials[name]
    out = tmp_path / f"trial-{name}"
    result = export_trial(spec, config=cfg, metrics=metrics, study="smoke", number=1, out_dir=out)
    assert result.ok, [str(c) for c in result.checks]
    shipped = {"onnxruntime": {"model.onnx"}, "openvino": {"model.xml", "model.bin"}}[name]
    assert shipped <= {p.name for p in out.iterdir()}
    code = (
        f"import sys; sys.path.insert(0, {str(out)!r}); import load; "
        "acc = load.test_accuracy(load.load()); "
        "assert 'torch' not in sys.modules, 'torch imported'; print(repr(acc))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert float(proc.stdout.strip()) == metrics["test_accuracy"]
