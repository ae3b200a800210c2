"""`<sweep dir>/optimization_results.yaml` in hydra-optuna-sweeper's form, so that what a
migrating user's scripts read after a sweep is still there: `name: optuna` with `best_params`
and `best_value` for one objective, `solutions` (`params`, `values`) for several.

Unlike the plugin's (`study.best_trial(s)`), the best are the report's front: feasible, and a
repeat told its twin's values (`duplicate_of`) is not listed beside its twin.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import yaml

from vitsweep.files import write_text
from vitsweep.track.pareto import front_trials


def optimization_results(study: optuna.Study) -> dict[str, Any] | None:
    """The plugin's document for `study`; None while no trial is feasible and complete."""
    best = sorted(front_trials(study, study.get_trials(deepcopy=False)), key=lambda t: t.number)
    if not best:
        return None
    if len(study.directions) == 1:
        first = best[0]  # ties: the earliest, as Optuna's best_trial
        return {"name": "optuna", "best_params": dict(first.params), "best_value": first.value}
    return {
        "name": "optuna",
        "solutions": [{"params": dict(t.params), "values": list(t.values)} for t in best],
    }


def write_optimization_results(study: optuna.Study, path: Path) -> bool:
    """Write the document; False (and no file) while there is nothing to report."""
    doc = optimization_results(study)
    if doc is None:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, yaml.safe_dump(doc, sort_keys=False))
    return True
