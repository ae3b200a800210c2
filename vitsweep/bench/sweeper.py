"""Sweeper overhead per trial: a full cycle through Hydra, Optuna and W&B minus trial.run.

Runs the smoke study in a scratch root and reads the timings back from storage: the cycle of
trial i is the time from its start to the next trial's start (ask, overrides, Hydra compose and
job, trial.run, tell, W&B run, report bookkeeping); `trial_s` is trial.run's own clock.
"""

from __future__ import annotations

import itertools
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import optuna

from vitsweep import record
from vitsweep.bench.common import Section, Target


def run(quick: bool = False) -> list[Section]:
    n = 6 if quick else 12
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            str(Path(sys.executable).parent / "vitsweep"),
            "-m",
            "experiment=smoke",
            f"hydra.sweeper.n_trials={n}",
            "tracking=wandb",
        ]
        subprocess.run(cmd, cwd=tmp, check=True, capture_output=True, stdin=subprocess.DEVNULL)
        study = optuna.load_study(
            study_name="smoke", storage=f"sqlite:///{Path(tmp) / 'multirun' / 'vitsweep.db'}"
        )
        trials = sorted(study.get_trials(), key=lambda t: t.number)
    rows, overheads, shares = [], [], []
    for a, b in itertools.pairwise(trials):
        cycle = (b.datetime_start - a.datetime_start).total_seconds()
        inner = float(record.metric(a, "trial_s"))
        overheads.append(cycle - inner)
        shares.append((cycle - inner) / cycle)
        rows.append(
            {"trial": a.number, "cycle_s": cycle, "trial_run_s": inner, "overhead_s": cycle - inner}
        )
    med, med_share = statistics.median(overheads), statistics.median(shares)
    med_trial = statistics.median(r["trial_run_s"] for r in rows)
    goal = max(0.3, 0.05 * med_trial)
    return [
        Section(
            title="Sweeper overhead per trial (smoke study, SQLite, W&B offline)",
            rows=[
                {
                    "trials": len(rows),
                    "median trial.run s": med_trial,
                    "median overhead s": med,
                    "overhead share": med_share,
                }
            ],
            targets=[
                Target("overhead per trial (s)", med, f"<= {goal:.2f} (0.3 s or 5%)", med <= goal)
            ],
        )
    ]
