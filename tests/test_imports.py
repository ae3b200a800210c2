"""The import graph, read with `ast` (module level and inside functions): imports run one way.

    app (CLI) -> config (the doorway, and the Hydra sweeper) -> search, track -> trial, export
    -> the rooms that are searched and judged (data, models, tome, precision, measure, runtime)
    -> the shared base (spec, errors, record, runctx, hypervolume, files)

search hands finished trials to a Recorder and never imports track; track never imports search;
nothing imports the CLI; benchmarks sit beside the CLI and only their own tests import them.

search and track serve any Hydra app, so they import nothing ViT-specific: no room, no trial, no
`vit_space`, and from the shared `spec` only its generic names (checked here by name, and once
more at run time: importing every module of both leaves torch, timm and the rooms unimported).
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BASE = {"spec", "errors", "record", "runctx", "hypervolume", "files", "stats"}
ROOMS = {"data", "models", "tome", "precision", "measure", "runtime"}
# package -> the vitsweep packages it may import (besides itself)
ALLOWED: dict[str, set[str]] = {
    **{b: BASE for b in BASE},
    **{r: ROOMS | BASE for r in ROOMS},
    # measure.mode=predicted: a trial priced by the predictors, which never import trial
    "trial": ROOMS | BASE | {"predict"},
    # the predictors (issue #30) judge candidates with what the rooms build and time
    "predict": ROOMS | BASE,
    "vit_space": ROOMS | BASE,
    "export": ROOMS | BASE | {"trial", "config"},
    "confirm": ROOMS | BASE | {"trial", "isolated"},
    "isolated": BASE | {"trial"},
    # The sweeper serves any Hydra app (issue #31): nothing ViT-specific below it.
    "search": BASE,
    "track": BASE,
    "config": ROOMS | BASE | {"trial", "search", "track", "export"},
    "app": ROOMS | BASE | {"trial", "isolated", "search", "track", "export", "config", "confirm"},
    "bench": ROOMS
    | BASE
    | {"trial", "isolated", "search", "track", "export", "config", "confirm", "predict"},
}


def imports(path: Path) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
            out += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
    return [(n, name) for n, name in out if name == "vitsweep" or name.startswith("vitsweep.")]


def package(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def sources() -> list[Path]:
    return sorted((ROOT / "vitsweep").rglob("*.py"))


def test_every_package_is_placed() -> None:
    found = {p.relative_to(ROOT / "vitsweep").parts[0].removesuffix(".py") for p in sources()}
    assert found - {"__init__"} <= set(ALLOWED), "a new module needs its place in the graph"


@pytest.mark.parametrize("path", sources(), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_run_one_way(path: Path) -> None:
    own = path.relative_to(ROOT / "vitsweep").parts[0].removesuffix(".py")
    if own == "__init__":
        return
    wrong = []
    for line, name in imports(path):
        target = package(name)
        if target is None or target == own:
            continue
        here = ROOT / "vitsweep"
        known = (here / target).is_dir() or (here / f"{target}.py").exists()
        if known and target not in ALLOWED[own]:
            wrong.append(f"{path.name}:{line} imports {name} ({own} -> {target})")
    assert not wrong, "\n".join(wrong)


def test_only_the_benchmarks_own_tests_import_benchmarks() -> None:
    wrong = []
    for path in sorted((ROOT / "tests").glob("*.py")):
        if path.name.startswith("test_bench_"):
            continue
        for line, name in imports(path):
            if package(name) == "bench":
                wrong.append(f"{path.name}:{line} imports {name}")
    assert not wrong, "\n".join(wrong)


# What search and track may take from vitsweep.spec, which also holds the ViT trial specs.
GENERIC_SPEC_NAMES = {"vitsweep.spec", "vitsweep.spec.ConfigError", "vitsweep.spec.TrackingSpec"}


@pytest.mark.parametrize("room", ["search", "track"])
def test_search_and_track_take_only_generic_names_from_spec(room: str) -> None:
    wrong = [
        f"{path.name}:{line} imports {name}"
        for path in sorted((ROOT / "vitsweep" / room).glob("*.py"))
        for line, name in imports(path)
        if package(name) == "spec" and name not in GENERIC_SPEC_NAMES
    ]
    assert not wrong, "\n".join(wrong)


def test_importing_search_and_track_loads_nothing_vit_specific() -> None:
    """At run time too: a lazy import inside a function (the kind the AST check reads but cannot
    follow through re-exports) would show up here once the module is imported."""
    code = (
        "import importlib, pkgutil, sys\n"
        "import vitsweep.search, vitsweep.track\n"
        "for pkg in (vitsweep.search, vitsweep.track):\n"
        "    for m in pkgutil.iter_modules(pkg.__path__):\n"
        "        importlib.import_module(f'{pkg.__name__}.{m.name}')\n"
        "print(' '.join(sorted(sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    vit = {*ROOMS, "trial", "vit_space", "config", "app", "isolated", "confirm", "export"}
    loaded = [
        m
        for m in out
        if m.split(".")[0] in ("torch", "timm") or (m.startswith("vitsweep.") and package(m) in vit)
    ]
    assert not loaded, f"search/track loaded {loaded[:5]}"


HEAVY = ("torch", "timm", "torchvision")


def failing_call(setup: str, call: str, *args: str) -> tuple[str, list[str], str]:
    """(exit code, modules loaded by then, stderr) of `call` in a fresh interpreter, after
    `setup`; `args` are its sys.argv[1:]."""
    code = (
        f"import sys\n{setup}\n"
        f"try:\n    {call}\n"
        "except SystemExit as e:\n    print(e.code, ' '.join(sorted(sys.modules)))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True, text=True
    )
    exit_code, *loaded = proc.stdout.split() or ["(no exit)"]
    return exit_code, loaded, proc.stderr


def heavy(loaded: list[str]) -> list[str]:
    return [m for m in loaded if m.split(".")[0] in HEAVY]


def test_a_config_check_that_fails_loads_no_torch() -> None:
    """A launch with a mistake fails in the check, before anything imports torch (1.5-2 s of a
    3 s command): the check composes the search space (`vit_space`, the precision knobs),
    converts the specs and only then reaches the bad root."""
    code_, loaded, err = failing_call(
        "from vitsweep.config import check",
        "check(['-m', 'experiment=smoke', 'paths.root=/proc/vitsweep'])",
    )
    assert code_ == "2" and "paths.root=/proc/vitsweep" in err, err[-500:]
    assert "vitsweep.vit_space" in loaded and "vitsweep.precision.knobs" in loaded
    assert not heavy(loaded), f"the failing check imported {heavy(loaded)[:5]}"


@pytest.mark.parametrize("main", ["train_main", "export_main", "confirm_main", "report_main"])
def test_a_console_script_given_a_bad_key_fails_before_importing_torch(main: str) -> None:
    """vitsweep-train/-export/-confirm/-report: a mistyped key is a one-line error in about
    0.6 s; they imported torch first, and took 2.3-2.4 s to say it."""
    code_, loaded, err = failing_call(
        "from vitsweep import app\nsys.argv = ['x', 'nosuchkey=1']", f"app.{main}()"
    )
    assert code_ == "2" and "nosuchkey" in err, err[-500:]
    assert not heavy(loaded), f"{main} imported {heavy(loaded)[:5]} before failing"


def test_a_sweep_refused_by_its_storage_never_imports_torch() -> None:
    """The launch note on energy (which resolves the device with torch) is asked for once the
    study is open: a bad storage URL is a one-line error in about 1 s, not 3."""
    setup = (
        "from vitsweep import app\n"
        "sys.argv = ['vitsweep', '-m', 'experiment=smoke', 'hydra.sweeper.storage=foo://bar',\n"
        "            f'paths.root={sys.argv[1]}', f'hydra.sweep.dir={sys.argv[1]}/h']"
    )
    with tempfile.TemporaryDirectory() as tmp:
        code_, loaded, err = failing_call(setup, "app.main()", tmp)
    assert code_ == "2" and "hydra.sweeper.storage" in err, err[-500:]
    assert not heavy(loaded), f"the refused launch imported {heavy(loaded)[:5]}"


@pytest.mark.parametrize(("package", "taker"), [("precision", "tq"), ("models", "train")])
def test_a_module_of_a_lazy_package_imports_first(package: str, taker: str) -> None:
    """`vitsweep.precision` and `vitsweep.models` resolve names lazily (their `__getattr__`): a
    module importing a sibling as `from vitsweep.precision import transform` must still import
    on its own, first, in a fresh interpreter (`tq` did not: the package looked for `transform`
    in `apply`, which imports `tq`)."""
    pkg = ROOT / "vitsweep" / package
    subs = {p.stem for p in pkg.glob("*.py")}
    pattern = rf"^from vitsweep\.{package} import (\w+)"
    takers = {
        p.stem for p in pkg.glob("*.py") if subs & set(re.findall(pattern, p.read_text(), re.M))
    }
    assert taker in takers
    for module in sorted(takers):
        proc = subprocess.run(
            [sys.executable, "-c", f"import vitsweep.{package}.{module}"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 0, f"{module}: {proc.stderr.strip().splitlines()[-1:]}"


def test_reading_a_checkpoint_does_not_import_the_model_builders() -> None:
    """The launch check reads `arch.checkpoint` through `vitsweep.models.checkpoint`; the lazy
    package leaves timm and torchvision (`models.build`) unimported."""
    code = "import sys, vitsweep.models.checkpoint as c; print(' '.join(sorted(sys.modules)))"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    loaded = proc.stdout.split()
    assert "vitsweep.models.checkpoint" in loaded, proc.stderr[-500:]
    builders = [m for m in heavy(loaded) if m.split(".")[0] != "torch"]  # torch reads the file
    assert not builders and "vitsweep.models.build" not in loaded, builders[:5]
