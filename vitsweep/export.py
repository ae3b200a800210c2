"""`vitsweep-export`: one trial's model, ready to deploy, proven to be the model that was measured.

What an export directory holds (`<paths.root>/<study>/export/trial-<n>/`):
- `model.pt`: the deployed weights -- the subnet after ToMe and precision surgery (int8 codes,
  packed low-bit codes, bf16 tensors as they run) -- plus the plain recipe that rebuilds their
  module tree (architecture, token and precision settings, the mixed-precision plan). Plain data
  only, so `torch.load(weights_only=True)` reads it and loading runs no pickled code.
- `model.pt2`: for PT2E int8 (int8, and mixed's 8-bit layers, on x86 CPUs): the very
  `torch.export` program the trial compiled and measured (`torch.export.save`), int8 weights
  and calibrated activation scales inside; `model.pt` then holds the recipe and no weights.
  Loading compiles it again (inductor, freezing) exactly as the trial did.
- `model.ts`: the same model traced to TorchScript, only when the traced module reproduces the
  trial's accuracy too (fp32 and bf16 do on this CPU); otherwise README says why not.
- `config.yaml` (the trial's resolved config, passwords masked), `metrics.json` (the trial's
  metrics as stored in the study), `README.md` and `load.py` (the loading code).

A trial run on another runtime (`runtime=onnxruntime|openvino`, issue #34) ships that runtime's
artefact instead: `model.onnx`, or OpenVINO IR `model.xml` + `model.bin`, with `runtime.json`
(how the session was opened), `check.npz` (the test split's images and labels) and a `load.py`
that needs only the runtime and numpy; it is re-measured both through vitsweep and by running
that `load.py` in a fresh process, before it is kept.

Why rebuild-then-load rather than pickling the module: a pickle ties the file to class paths and
runs code on load; the recipe + state_dict survives refactors and is safe to open.
Nothing here sees Hydra or Optuna: the CLI (`vitsweep-export`) resolves the study and the trial.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from vitsweep.runctx import RunContext
from vitsweep.spec import ConfigError, TrialSpec

FORMAT = "vitsweep-export/1"
MODEL_FILE = "model.pt"
RUNTIME_FILE = "runtime.json"  # a runtime artefact's record (runtime, files, threads, spec)
CHECK_FILE = "check.npz"  # the test split as numpy, for load.py without torch
PROGRAM_FILE = "model.pt2"
TORCHSCRIPT_FILE = "model.ts"


@dataclass(frozen=True)
class Check:
    """One stored number against the same number measured on the reloaded export."""

    name: str
    stored: Any
    measured: Any

    @property
    def ok(self) -> bool:
        return self.stored == self.measured

    def __str__(self) -> str:
        verdict = "ok" if self.ok else "DIFFERS"
        return f"{self.name}: stored {self.stored}, re-measured {self.measured} ({verdict})"


@dataclass(frozen=True)
class Exported:
    path: Path  # the export directory (`<path>.partial` when a check failed)
    checks: tuple[Check, ...]
    formats: dict[str, str]  # file name or format -> what it is, or why it was skipped

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)


# ----------------------------------------------------------------------------------- loading


def _read(path: str | Path) -> dict[str, Any]:
    file = Path(path) / MODEL_FILE if Path(path).is_dir() else Path(path)
    if not file.is_file():
        raise ConfigError(f"{file}: no such export file (expected <export dir>/{MODEL_FILE})")
    try:
        with warnings.catch_warnings():  # torch.ao's qint8 tensors warn of their deprecation
            warnings.simplefilter("ignore", UserWarning)
            obj = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ConfigError(f"{file}: unreadable export ({first})") from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        found = obj.get("format") if isinstance(obj, dict) else type(obj).__name__
        raise ConfigError(f"{file}: not a {FORMAT} file (format {found!r})")
    return obj


def export_spec(path: str | Path) -> TrialSpec:
    """The TrialSpec an export was made from (data split, measure settings, ...)."""
    meta = _runtime_record(path)
    return _spec(meta if meta is not None else _read(path))


def _runtime_record(path: str | Path) -> dict[str, Any] | None:
    """runtime.json of a runtime artefact; None for a torch export."""
    file = _dir(path) / RUNTIME_FILE
    return json.loads(file.read_text()) if file.is_file() else None


def _spec(obj: dict[str, Any]) -> TrialSpec:
    from vitsweep.config.schema import to_spec

    return to_spec(TrialSpec, obj["spec"], "")


def load_export(path: str | Path, device: str | None = None) -> tuple[nn.Module, RunContext]:
    """(model, ctx) of an export directory: `ctx.forward(model, images)` gives the logits, fed
    exactly as the trial fed it (device, input dtype, autocast). `device`: default the trial's.

    The float module tree is rebuilt from the recipe, the trial's token and precision surgery is
    applied to it (mixed: the stored plan, no calibration), then the saved weights replace all
    of its tensors (strict: every key and shape must match).
    """
    return _model(_read(path), device, _dir(path))


def _dir(path: str | Path) -> Path:
    return Path(path) if Path(path).is_dir() else Path(path).parent


def _program(obj: dict[str, Any], device: str | None, where: Path) -> tuple[nn.Module, RunContext]:
    """The saved PT2E program, as the trial ran it before compiling (the ctx says so)."""
    from vitsweep.precision import PLAN_ATTR
    from vitsweep.precision.mixed import MixedPlan
    from vitsweep.precision.pt2e import load_program

    file = where / obj["program"]
    if not file.is_file():
        raise ConfigError(f"{file}: missing; this export's model.pt names it as its program")
    module = load_program(file)
    if obj.get("plan"):
        setattr(module, PLAN_ATTR, MixedPlan.from_dict(obj["plan"]))
    ctx = RunContext(
        device=device or obj["device"],
        input_dtype=getattr(torch, obj["input_dtype"]),
        precision_exec=obj["precision_exec"],
        wants_compile=True,
    )
    return module.to(ctx.device), ctx


def _model(
    obj: dict[str, Any], device: str | None, where: Path | None = None
) -> tuple[nn.Module, RunContext]:
    from vitsweep import models, precision, tome
    from vitsweep.precision.mixed import MixedPlan

    if obj.get("program"):
        if where is None:
            raise ConfigError("this export ships a torch.export program: load it by directory")
        return _program(obj, device, where)
    spec = _spec(obj)
    model = models.skeleton(obj["architecture"])
    model = tome.apply_token(model, spec.token)
    plan = MixedPlan.from_dict(obj["plan"]) if obj.get("plan") else None
    # The saved tensors replace the coded ones: a tq model is not fine-tuned again on load.
    prec = spec.precision
    if prec.mode == "tq":
        prec = dataclasses.replace(prec, finetune_steps=0)
    model, ctx = precision.apply_precision(
        model,
        prec,
        device=device or obj["device"],
        int8_backend=obj.get("int8_backend") or None,
        plan=plan,
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*quantized tensor.*")
        model.load_state_dict(obj["state_dict"], strict=True)
    return model.eval(), ctx


def load_torchscript(path: str | Path, device: str | None = None) -> tuple[nn.Module, RunContext]:
    """(TorchScript module, ctx) of an export that has `model.ts`; autocast is traced into the
    module, so `ctx` only moves and casts the input."""
    return _torchscript_module(Path(path), _read(path), device)


def _torchscript_module(
    path: Path, obj: dict[str, Any], device: str | None
) -> tuple[nn.Module, RunContext]:
    file = path / TORCHSCRIPT_FILE
    if not file.is_file():
        raise ConfigError(f"{file}: this export has no TorchScript model (see its README.md)")
    device = device or obj["device"]
    ctx = RunContext(
        device=device,
        input_dtype=getattr(torch, obj["input_dtype"]),
        precision_exec=f"{obj['precision_exec']} (TorchScript)",
    )
    with warnings.catch_warnings():  # "torch.jit.load is deprecated": it still loads and runs
        warnings.simplefilter("ignore", FutureWarning)
        module = torch.jit.load(str(file), map_location=device)
    return module.eval(), ctx


def remeasure(path: str | Path) -> tuple[Check, ...]:
    """Load the export from disk and measure again what must not change: val and test accuracy
    on the trial's own split, at the trial's thread count, and the stored bytes; TorchScript's
    accuracy too when the export has it."""
    from vitsweep import data, precision, trial

    path = Path(path)
    if _runtime_record(path) is not None:
        return _remeasure_runtime(path)
    obj = _read(path)  # once: model.pt holds every weight
    spec = _spec(obj)
    stored = json.loads((path / "metrics.json").read_text())
    splits = data.load(spec.data, data.data_dir(spec.root))
    model, ctx = _model(obj, None, path)
    run_model, run_ctx, _ = trial.runner(model, ctx, splits, spec.measure)  # compiled as the trial
    checks = [
        Check(
            "accuracy",
            stored.get("accuracy"),
            trial.accuracy(run_model, run_ctx, splits.val, spec.measure),
        ),
        Check(
            "test_accuracy",
            stored.get("test_accuracy"),
            trial.accuracy(run_model, run_ctx, splits.test, spec.measure),
        ),
        Check("model_bytes", stored.get("model_bytes"), precision.model_bytes(model)),
    ]
    if (path / TORCHSCRIPT_FILE).is_file():
        ts, ts_ctx = _torchscript_module(path, obj, None)
        measured = trial.accuracy(ts, ts_ctx, splits.val, spec.measure)
        checks.append(Check("accuracy (TorchScript)", stored.get("accuracy"), measured))
    return tuple(checks)


# ----------------------------------------------------------------------------------- writing


def default_dir(root: str | Path, study: str, number: int) -> Path:
    return Path(root) / study / "export" / f"trial-{number}"


def export_trial(
    spec: TrialSpec,
    *,
    config: dict[str, Any],
    metrics: dict[str, Any],
    study: str,
    number: int,
    out_dir: str | Path,
) -> Exported:
    """Rebuild trial `number` with `trial.build` (the trial's own code path, from the cached
    weights it used), write its export, load it back from disk and re-measure it.

    The files go to `<out_dir>.partial` first and become `out_dir` only when every check holds;
    a failing export stays in `.partial` for inspection and `Exported.ok` is False.
    """
    from vitsweep import models, runtime, trial
    from vitsweep.models.checkpoint import atomic_save, plain
    from vitsweep.precision import PLAN_ATTR
    from vitsweep.precision.int8 import eager_backend, resolve_int8_backend
    from vitsweep.precision.pt2e import PROGRAM_ATTR

    spec = trial.as_ran(spec, metrics)
    weights = models.weights_file(spec.arch, spec.train, spec.data, spec.root)
    if weights is not None and not weights.is_file():
        raise ConfigError(
            f"trial={number}: its trained weights {weights} are not there (paths.root="
            f"{spec.root}); export from the launch directory of the study, where they are cached"
        )
    built = trial.build(spec)
    out_dir = Path(out_dir)
    if runtime.is_deployed(built.model):
        return _export_runtime(spec, built, config, metrics, study, number, out_dir)
    model, ctx, splits = built.model, built.ctx, built.splits
    geometry = models.Geometry(splits.image_size, splits.in_chans, splits.num_classes)
    plan = getattr(model, PLAN_ATTR, None)
    int8 = spec.precision.mode in ("int8", "mixed")
    program = getattr(model, PROGRAM_ATTR, None)

    staging = _staging(out_dir)
    record = {
        "format": FORMAT,
        "study": study,
        "trial": number,
        "spec": plain(spec),
        "architecture": models.architecture(spec.arch, geometry),
        "device": ctx.device,
        "input_dtype": str(ctx.input_dtype).removeprefix("torch."),
        "precision_exec": ctx.precision_exec,
        # The eager kernels a rebuild uses (a PT2E program is not rebuilt: it is loaded).
        "int8_backend": eager_backend(
            ctx.device, resolve_int8_backend(ctx.device, spec.precision.int8_backend)
        )
        if int8 and program is None
        else None,
        "plan": plain(plan) if plan is not None else None,
        "program": PROGRAM_FILE if program is not None else None,
        "state_dict": model.state_dict() if program is None else {},
    }
    atomic_save(record, staging / MODEL_FILE).chmod(0o644)  # a temp file's 0600 otherwise
    if program is not None:
        torch.export.save(program, staging / PROGRAM_FILE)
        (staging / PROGRAM_FILE).chmod(0o644)
        formats = {
            PROGRAM_FILE: "the trial's torch.export int8 program (torch.export.load; compile "
            "with inductor freezing for int8 kernels)",
            MODEL_FILE: "recipe; load both with vitsweep.export.load_export",
            TORCHSCRIPT_FILE: f"skipped: the program ships as {PROGRAM_FILE}",
        }
    else:
        formats = {MODEL_FILE: "weights + recipe; load with vitsweep.export.load_export"}
        formats[TORCHSCRIPT_FILE] = _torchscript(model, ctx, splits, staging / TORCHSCRIPT_FILE)
    _write_text(staging, config, metrics, study, number)

    checks = list(remeasure(staging))
    ts_checks = [c for c in checks if "TorchScript" in c.name]
    if ts_checks and not ts_checks[0].ok:  # ship TorchScript only where it reproduces
        (staging / TORCHSCRIPT_FILE).unlink()
        formats[TORCHSCRIPT_FILE] = f"skipped: traced module does not reproduce ({ts_checks[0]})"
        checks.remove(ts_checks[0])
    elif ts_checks:
        formats[TORCHSCRIPT_FILE] += "; reproduces the trial's accuracy"
    _write_readme(staging, out_dir, study, number, metrics, ctx, formats)
    return _keep(Exported(staging, tuple(checks), formats), out_dir)


def _staging(out_dir: Path) -> Path:
    """`<out_dir>.partial`, empty: where an export is written until its checks hold."""
    staging = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    return staging


def _keep(result: Exported, out_dir: Path) -> Exported:
    """The staged export moved to `out_dir` when every check holds; else left staged."""
    if not result.ok:
        return result
    shutil.rmtree(out_dir, ignore_errors=True)
    result.path.rename(out_dir)
    return dataclasses.replace(result, path=out_dir)


def _export_runtime(
    spec: TrialSpec,
    built: Any,
    config: dict[str, Any],
    metrics: dict[str, Any],
    study: str,
    number: int,
    out_dir: Path,
) -> Exported:
    """The runtime's own artefact, its record, the check data and a torch-free `load.py`."""
    import numpy as np

    from vitsweep.models.checkpoint import plain
    from vitsweep.runtime.loaders import load_py
    from vitsweep.runtime.ov import HINTS

    deployed, ctx, splits = built.model.deployed, built.ctx, built.splits
    staging = _staging(out_dir)
    for file in deployed.files:
        shutil.copy2(file, staging / file.name)
    test = [splits.test[i] for i in range(len(splits.test))]
    np.savez_compressed(
        staging / CHECK_FILE,
        images=torch.stack([x for x, _ in test]).numpy(),
        labels=np.asarray([int(y) for _, y in test]),
    )
    meta = {
        "format": FORMAT,
        "study": study,
        "trial": number,
        "runtime": deployed.runtime,
        "precision": deployed.mode,
        "precision_exec": ctx.precision_exec,
        "files": [f.name for f in deployed.files],
        "threads": deployed.threads,
        "inference_precision": HINTS[deployed.mode],
        "eval_batch_size": spec.measure.eval_batch_size,
        "input": "images (float32, batch x C x H x W, batch dynamic)",
        "spec": plain(spec),
    }
    (staging / RUNTIME_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    _write_text(staging, config, metrics, study, number)
    (staging / "load.py").write_text(load_py(deployed.runtime))
    names = " + ".join(f.name for f in deployed.files)
    formats = {
        names: f"the trial's {deployed.runtime} model, as measured ({ctx.precision_exec})",
        RUNTIME_FILE: "how the session is opened (threads, precision hint) and the trial's spec",
        CHECK_FILE: "the test split's images and labels: what load.py re-measures",
        "load.py": f"loads it with {deployed.runtime} and numpy only; python load.py re-measures",
    }
    checks = _remeasure_runtime(staging)
    _write_readme(staging, out_dir, study, number, metrics, ctx, formats)
    return _keep(Exported(staging, checks, formats), out_dir)


def _remeasure_runtime(path: Path) -> tuple[Check, ...]:
    """A runtime artefact re-measured twice: opened by vitsweep and measured on the trial's
    splits (val, test, file bytes), and by its own `load.py` in a fresh process (test)."""
    import subprocess
    import sys

    from vitsweep import data, runtime, trial
    from vitsweep.runtime.module import Deployed

    meta = _runtime_record(path)
    assert meta is not None
    spec = _spec(meta)
    stored = json.loads((path / "metrics.json").read_text())
    files = tuple(path / name for name in meta["files"])
    deployed = Deployed(
        meta["runtime"], files, meta["precision_exec"], 0.0, (), meta["threads"], meta["precision"]
    )
    model, ctx = runtime.load(deployed)
    splits = data.load(spec.data, data.data_dir(spec.root))
    proc = subprocess.run(
        [sys.executable, str(path / "load.py")], capture_output=True, text=True, cwd=path
    )
    lines = proc.stdout.strip().splitlines()
    alone = json.loads(lines[-1])["test_accuracy"] if lines else proc.stderr.strip()[-300:]
    return (
        Check(
            "accuracy", stored.get("accuracy"), trial.accuracy(model, ctx, splits.val, spec.measure)
        ),
        Check(
            "test_accuracy",
            stored.get("test_accuracy"),
            trial.accuracy(model, ctx, splits.test, spec.measure),
        ),
        # model_bytes less OpenVINO's xml, whose generated layer names vary between processes
        Check("weights_bytes", stored.get("weights_bytes"), runtime.weights_bytes(model)),
        Check("test_accuracy (load.py, without torch)", stored.get("test_accuracy"), alone),
    )


def _torchscript(model: nn.Module, ctx: RunContext, splits: Any, file: Path) -> str:
    """Trace the model (autocast included) on a few real images; a failure is a note, not an
    error: the state_dict export stands on its own."""
    x = torch.stack([splits.val[i][0] for i in range(min(4, len(splits.val)))])
    try:
        with warnings.catch_warnings(), torch.no_grad(), ctx.autocast():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(model, ctx.prepare(x), check_trace=False)
            torch.jit.save(traced, str(file))
    except Exception as e:  # tracing is best effort by nature: any op may be untraceable
        file.unlink(missing_ok=True)
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        return f"skipped: torch.jit.trace failed ({type(e).__name__}: {first})"
    return f"TorchScript (torch.jit.trace), input {str(ctx.input_dtype).removeprefix('torch.')}"


def _write_text(
    out: Path, config: dict[str, Any], metrics: dict[str, Any], study: str, number: int
) -> None:
    from vitsweep.errors import mask_url

    header = f"# trial {number} of study {study!r}: the resolved config it ran with\n"
    text = yaml.safe_dump(config, sort_keys=False, default_flow_style=None)
    (out / "config.yaml").write_text(header + mask_url(text))
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    (out / "load.py").write_text(_LOAD_PY)


_LOAD_PY = '''"""Load this export and re-measure it (needs only vitsweep): python load.py"""

from pathlib import Path

from vitsweep.export import load_export, remeasure

here = Path(__file__).resolve().parent
model, ctx = load_export(here)  # logits = ctx.forward(model, images)
print(type(model).__name__, "|", ctx.precision_exec)  # PT2E: compile as remeasure does
checks = remeasure(here)
for check in checks:
    print(check)
raise SystemExit(0 if all(c.ok for c in checks) else 1)
'''


def _write_readme(
    out: Path,
    final: Path,
    study: str,
    number: int,
    metrics: dict[str, Any],
    ctx: RunContext,
    formats: dict[str, str],
) -> None:
    shown = ("accuracy", "test_accuracy", "throughput", "latency_ms", "params", "flops")
    kept = (*shown, "model_bytes", "deploy_bytes")
    rows = "\n".join(f"| {k} | {metrics[k]} |" for k in kept if k in metrics)
    files = "\n".join(f"- `{name}`: {note}" for name, note in formats.items())
    dtype = str(ctx.input_dtype).removeprefix("torch.")
    ts = (
        f"""
TorchScript, without vitsweep (autocast is traced in; feed {dtype} input on {ctx.device}):

```python
import torch
model = torch.jit.load("{TORCHSCRIPT_FILE}").eval()
logits = model(images.to("{ctx.device}", torch.{dtype}))
```
"""
        if (out / TORCHSCRIPT_FILE).is_file()
        else ""
    )
    load = _RUNTIME_LOAD if (out / RUNTIME_FILE).is_file() else _TORCH_LOAD.format(final=final)
    (out / "README.md").write_text(
        f"""# Trial {number} of study `{study}`

Runs as: {metrics.get("precision_exec", ctx.precision_exec)} on {ctx.device}.

| metric | value (as measured in the study) |
|---|---|
{rows}

Files:
{files}
- `config.yaml`: the trial's resolved config; `metrics.json`: all its stored metrics.
{load}{ts}"""
    )


_TORCH_LOAD = """
## Load (needs only vitsweep)

```python
from vitsweep.export import load_export
model, ctx = load_export("{final}")
logits = ctx.forward(model, images)  # images: float (B, C, H, W), preprocessed as the data split
```

`python load.py` loads it and re-measures the accuracy on the trial's validation split; it must
equal the stored one exactly (same split, same thread count, same kernels).
"""

_RUNTIME_LOAD = """
## Load (needs only the runtime and numpy: no torch, no vitsweep)

```python
from load import load
predict = load()  # opened as the trial opened it (threads, precision hint)
logits = predict(images)  # images: float32 numpy (B, C, H, W), preprocessed as the data split
```

`python load.py` re-measures the test accuracy on `check.npz`; it must equal the stored one
exactly (same images, same evaluation batches, same thread count, same kernels).
"""
