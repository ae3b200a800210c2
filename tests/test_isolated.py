"""Trials in a clean process (`vitsweep.isolated`): real child processes of a real forkserver;
what the child computes, raises or suffers comes back to the sweep as it would in-process."""

from __future__ import annotations

import ast
import dataclasses
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from vitsweep import isolated, trial
from vitsweep.config import compose, trial_spec
from vitsweep.spec import ConfigError, TrialSpec


def _pid(spec: TrialSpec) -> int:
    return os.getpid()


def _raises(spec: TrialSpec) -> None:
    raise ConfigError(f"precision.mode={spec.seed}: made up for the test")


def _dies(spec: TrialSpec) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def test_the_function_runs_in_another_process_each_time() -> None:
    first = isolated.in_child(_pid, TrialSpec())
    second = isolated.in_child(_pid, TrialSpec())
    assert os.getpid() not in (first, second) and first != second


def test_an_error_in_the_child_is_raised_here_as_it_was() -> None:
    with pytest.raises(ConfigError) as err:
        isolated.in_child(_raises, dataclasses.replace(TrialSpec(), seed=7))
    assert str(err.value) == "precision.mode=7: made up for the test"  # the fail_reason
    assert any("in the trial's process" in n and "_raises" in n for n in err.value.__notes__)


def test_a_child_that_dies_fails_the_trial_with_the_signal() -> None:
    with pytest.raises(isolated.TrialProcessDied, match="killed by SIGKILL"):
        isolated.in_child(_dies, TrialSpec())


def test_an_isolated_trial_trains_first_then_measures_what_an_in_process_one_does(
    tmp_path: Path,
) -> None:
    spec = trial_spec(compose(["experiment=smoke", f"paths.root={tmp_path}"]))
    assert trial.needs_training(spec)
    alone = isolated.run(spec)
    assert not trial.needs_training(spec)  # the training child cached what the trial needed
    here = trial.run(spec)
    # Same weights, same images, same thread count: the same per-image results.
    assert alone.accuracy == here.accuracy and alone.test_accuracy == here.test_accuracy
    assert alone.params == here.params and alone.flops == here.flops
    assert alone.throughput > 0


def test_the_server_imports_the_vitsweep_this_process_runs_not_one_in_the_cwd(tmp_path) -> None:
    """Launched from another checkout's folder, as a console script is (its own folder first on
    sys.path, not the working directory), the trials still run the launching vitsweep."""
    import subprocess
    import sys

    import vitsweep

    checkout = tmp_path / "checkout"
    (checkout / "vitsweep").mkdir(parents=True)
    (checkout / "vitsweep" / "__init__.py").write_text("SHADOW = True\n")
    script = tmp_path / "bin" / "launch.py"
    script.parent.mkdir()
    script.write_text(
        "import importlib.util\n"
        "from vitsweep import isolated\n"
        "if __name__ == '__main__':\n"
        "    print(isolated.in_child(importlib.util.find_spec, 'vitsweep').origin)\n"
    )
    out = subprocess.run(
        [sys.executable, str(script)], cwd=checkout, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert Path(out.stdout.strip()).resolve() == Path(vitsweep.__file__).resolve()


def test_the_sweeps_own_process_never_imports_the_models_room(tmp_path: Path) -> None:
    """Whether a trial's weights are cached is asked in a child too: the process that runs the
    study imports neither timm, torchvision nor sklearn (3 s of every launch), while the child
    trains what was missing and the weights land in the cache."""
    code = (
        "import json, sys\n"
        "from vitsweep import isolated, trial\n"
        "from vitsweep.config import compose, trial_spec\n"
        f"spec = trial_spec(compose(['experiment=smoke', 'paths.root={tmp_path}']))\n"
        "isolated.trained(spec)\n"
        "loaded = sorted({m.split('.')[0] for m in sys.modules})\n"
        "print(json.dumps([loaded, trial.needs_training(spec)]))\n"  # the check loads them here
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300
    ).stdout.splitlines()[-1]
    loaded, needs = json.loads(out)
    assert not needs  # the child trained it
    assert "torch" in loaded and not {"timm", "torchvision", "sklearn"} & set(loaded)


def test_children_do_not_import_again_what_the_launching_script_imports(tmp_path: Path) -> None:
    """Python 3.11's forkserver runs the script again in every child (its `__main__` preload
    is dead code), so a console script's imports (vitsweep.app: hydra, optuna) were paid by
    each trial's process. A module the script imports records every process that imports it:
    the launching one and the server, none of the children."""
    (tmp_path / "probe_mod.py").write_text(
        "import os\n"
        f"with open({str(tmp_path / 'imported')!r}, 'a') as f:\n"
        "    f.write(f'{os.getpid()}\\n')\n"
    )
    script = tmp_path / "launch.py"
    script.write_text(
        "import os\n"
        "import probe_mod\n"
        "from vitsweep import isolated\n"
        "def pid(_):\n"
        "    return os.getpid()\n"
        "if __name__ == '__main__':\n"
        "    print(isolated.main_imports())\n"
        "    print([isolated.in_child(pid, None) for _ in range(3)])\n"
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, env=env
    )
    assert out.returncode == 0, out.stderr
    preloaded, children = map(ast.literal_eval, out.stdout.strip().splitlines()[-2:])
    assert "probe_mod" in preloaded and "vitsweep.isolated" in preloaded
    importers = [int(pid) for pid in (tmp_path / "imported").read_text().split()]
    assert len(set(children)) == 3 and not set(children) & set(importers)
    assert len(importers) == 2  # this process and the forkserver
