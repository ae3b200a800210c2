"""Bad input and damaged state, as a hostile user would try them: every one ends in one line
(`vitsweep: error: ...`) with no traceback and a non-zero exit, and the study, the cached
weights and the W&B runs that existed before are exactly as they were. Real console scripts
against a real smoke study (SQLite, W&B offline)."""

from __future__ import annotations

import hashlib
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import optuna
import pytest
import torch

from tests.conftest import run_cli

SECRET = "s3cr3t-pw"
SMOKE = ("experiment=smoke",)


def _snapshot(root: Path) -> dict[str, object]:
    """What must not change: the study's trials as Optuna reads them, and every file of the
    cached weights and W&B runs, byte for byte. Not W&B's `logs/debug-core.log` links: they
    point at its service's log under ~/.cache/wandb, named by the second the service started,
    which a service of another test's sweep started in the same second appends to."""
    study = optuna.load_study(study_name="smoke", storage=f"sqlite:///{root / 'vitsweep.db'}")
    trials = [(t.number, t.state.name, t.values, t.params) for t in study.trials]
    files = {}
    for sub in ("models", "supernets", "smoke/wandb"):
        for p in sorted((root / sub).rglob("*")) if (root / sub).exists() else []:
            if p.is_file() and not p.is_symlink() and not p.name.endswith(".lock"):
                files[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return {"trials": trials, "files": files}


@pytest.fixture(scope="module")
def launch_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A launch directory holding a finished 2-trial smoke study, and some hostile files."""
    d = tmp_path_factory.mktemp("hostile")
    run_cli("vitsweep", "-m", *SMOKE, "hydra.sweeper.n_trials=2", cwd=d)
    (d / "garbage.db").write_bytes(b"this is not a database\n" * 20)
    (d / "garbage.log").write_bytes(bytes(range(256)) * 8)
    (d / "a_file").write_text("not a directory")
    (d / "bad.pt").write_bytes(b"\x80\x02not a checkpoint")
    torch.save({"weight": torch.zeros(3)}, d / "other_arch.pt")
    return d


# (command, arguments, what the one line must say)
CASES = [
    ("vitsweep", ["-m", "hydra.sweeper.constraints=['acc >= 3']"], "'acc' is not a metric"),
    ("vitsweep", ["-m", "hydra.sweeper.constraints=['accuracy > 3']"], "expected '<metric> >="),
    ("vitsweep", ["-m", f"hydra.sweeper.storage=postgresql://u:{SECRET}@127.0.0.1:1/db"],
     "cannot connect"),
    ("vitsweep", ["-m", "hydra.sweeper.storage=sqlite:///garbage.db"], "file is not a database"),
    ("vitsweep", ["-m", "hydra.sweeper.storage=journal:/proc/nope/j.log"], "cannot open the"),
    ("vitsweep", ["-m", "hydra.sweeper.storage=journal:garbage.log"], "not an Optuna journal"),
    ("vitsweep", ["-m", "hydra.sweeper.storage=foo://bar"], "hydra.sweeper.storage=foo://bar"),
    ("vitsweep", ["-m", "paths.root=/proc/vitsweep"], "paths.root=/proc/vitsweep: not a writable"),
    ("vitsweep", ["-m", "paths.root=a_file"], "paths.root=a_file: not a writable directory"),
    ("vitsweep", ["seed=abc"], "seed=abc: must be an integer"),
    ("vitsweep", ["-m", "arch.checkpoint=missing.pt"], "arch.checkpoint='missing.pt': no such"),
    ("vitsweep", ["-m", "arch.checkpoint=bad.pt"], "bad.pt: unreadable checkpoint"),
    ("vitsweep", ["arch.checkpoint=other_arch.pt"], "other_arch.pt: weights do not match"),
    ("vitsweep", ["-m", "arch.checkpoint=other_arch.pt"], "one file holds one architecture"),
    ("vitsweep", ["-m", "hydra.sweeper.n_trials=0"], "hydra.sweeper.n_trials=0: must be >= 1"),
    ("vitsweep", ["-m", "hydra.sweeper.sampler.name=cmaes"], "valid: tpe, nsga2, random, gp"),
    ("vitsweep", ["-m", "+hydra.sweeper.objectives.foo=maximize"], "objectives.foo: not a metric"),
    ("vitsweep", ["-m", "hydra.sweeper.objectives.energy=maximize"], "exists with directions"),
    ("vitsweep", ["-m", "~hydra.sweeper.objectives.energy",
                  "+hydra.sweeper.objectives.model_bytes=minimize"], "exists with objectives"),
    ("vitsweep", ["-m", "hydra.sweeper.max_failure_rate=2"], "must be in [0, 1]"),
    ("vitsweep", ["-m", "hydra.sweeper.sampler.name=grid", "hydra.sweeper.space_hook=null",
                  "token.r=interval(0,2)"], "needs choice() or range()"),
    ("vitsweep", ["-m", "hydra/launcher=nonexistent"], "no such option; valid: basic"),
    ("vitsweep", ["-m", "experiment=nope"], "experiment=nope: no such option"),
    ("vitsweep", ["data=folder", "data.root=/nonexistent"], "data.root"),
    ("vitsweep", ["token.rr=3"], "token.rr: unknown key; valid:"),
    ("vitsweep", ["token.r=choice(0,2)"], "a sweep needs -m"),
    ("vitsweep", ["measure.batch_size=0"], "measure.batch_size=0"),
    ("vitsweep-report", ["paths.root=nothere"], "no such file; run the study first"),
    ("vitsweep-report", ["hydra.sweeper.study_name=nosuch"], "no such study in storage"),
    ("vitsweep-export", ["trial=99"], "trial=99: no such trial"),
    ("vitsweep-export", ["paths.root=nothere", "trial=1"], "no such file; run the study first"),
    ("vitsweep-train", ["seed=x"], "seed=x: must be an integer"),
]  # fmt: skip


@pytest.mark.slow
def test_every_hostile_input_is_one_line_and_the_study_is_untouched(launch_dir: Path) -> None:
    root = launch_dir / "multirun"
    before = _snapshot(root)
    assert len(before["trials"]) == 2 and before["files"]  # there is something to protect
    hostile = {p.name: p.read_bytes() for p in launch_dir.iterdir() if p.is_file()}

    def attempt(case: tuple[str, list[str], str]) -> str | None:
        tool, args, said = case
        head, rest = (["-m"], args[1:]) if args[:1] == ["-m"] else ([], args)
        base = [] if any(a.startswith("experiment=") for a in rest) else list(SMOKE)
        proc = run_cli(tool, *head, *base, *rest, cwd=launch_dir, timeout=180, check=False)
        out = proc.stdout + proc.stderr
        errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("vitsweep: error: ")]
        line = errors[-1] if errors else ""
        ok = (
            proc.returncode != 0
            and "Traceback" not in out
            and len(errors) == 1
            and said in line
            and SECRET not in out
            and len(proc.stderr.splitlines()) <= 4  # the line, and at most Optuna's own notes
        )
        return None if ok else f"{tool} {args}: rc={proc.returncode} {line or out[-300:]!r}"

    # Independent processes against files they must only read: four at a time.
    with ThreadPoolExecutor(max_workers=4) as pool:
        problems = [p for p in pool.map(attempt, CASES) if p]
    assert not problems, "\n".join(problems)
    assert _snapshot(root) == before
    assert {p.name: p.read_bytes() for p in hostile_files(launch_dir)} == hostile
    assert not (launch_dir / "nothere").exists()  # a report of nothing creates nothing


def hostile_files(d: Path) -> list[Path]:
    return [p for p in d.iterdir() if p.is_file()]


def test_a_relaunch_after_all_that_still_resumes(launch_dir: Path) -> None:
    run_cli("vitsweep", "-m", *SMOKE, "hydra.sweeper.n_trials=3", cwd=launch_dir)
    study = optuna.load_study(
        study_name="smoke", storage=f"sqlite:///{launch_dir / 'multirun' / 'vitsweep.db'}"
    )
    numbers = [t.number for t in study.trials]
    assert numbers == list(range(len(numbers)))
    repeats = sum("duplicate_of" in t.user_attrs for t in study.trials)
    assert len(numbers) == 3 + repeats  # a repeat of a measured config costs no budget
    shutil.rmtree(launch_dir / "multirun" / "smoke" / "report")
    proc = run_cli("vitsweep-report", *SMOKE, cwd=launch_dir)
    assert (launch_dir / "multirun" / "smoke" / "report" / "results.yaml").is_file()
    # (the report composes the experiment's own budget, 4: this launch stopped at 3)
    said = f"3 distinct candidates measured for a budget of 4; {repeats} repeats told, not run"
    assert said in proc.stdout
