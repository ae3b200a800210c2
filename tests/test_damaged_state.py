"""Damaged state is survived: a journal whose last record was torn by a killed worker, a study
whose baseline failed. Real Optuna journal files, the real study loop and report."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from tests.fakestudy import NAME, launch, make_ctx
from vitsweep.config import recorder
from vitsweep.search.loop import Outcome
from vitsweep.search.storage import open_storage
from vitsweep.search.study import run_study


def _journal_ctx(tmp_path: Path, n_trials: int):
    ctx = make_ctx(tmp_path, n_trials=n_trials, wandb=False)
    return dataclasses.replace(ctx, storage_url=f"journal:{tmp_path / 'study.log'}")


def _complete_numbers(url: str) -> list[int]:
    """The numbers of the COMPLETE trials that measured a configuration (what the budget counts;
    a repeat of one is told its values and not counted)."""
    study = optuna.load_study(study_name=NAME, storage=open_storage(url))
    return sorted(
        t.number
        for t in study.trials
        if t.state == TrialState.COMPLETE and "duplicate_of" not in t.user_attrs
    )


def _tear(journal: Path) -> bytes:
    """What a worker killed inside `write` leaves: the first part of a record, no newline (a
    copy of the last record's first half, so it is a real record's bytes)."""
    last = journal.read_bytes().rstrip(b"\n").rsplit(b"\n", 1)[-1]
    fragment = last[: len(last) // 2]
    with journal.open("ab") as f:
        f.write(fragment)
    return fragment


def test_a_torn_last_record_is_cut_and_the_budget_completes(tmp_path: Path) -> None:
    journal = tmp_path / "study.log"
    first = _journal_ctx(tmp_path, n_trials=3)
    run_study(first, launch, recorder(first))
    kept = _complete_numbers(first.storage_url)
    assert len(kept) == 3
    before = journal.read_bytes()
    fragment = _tear(journal)

    again = _journal_ctx(tmp_path, n_trials=5)  # the baseline and all 4 candidates
    run_study(again, launch, recorder(again))
    done = _complete_numbers(again.storage_url)
    assert len(done) == 5 and done[:3] == kept  # none lost, none twice
    # The first three trials' records are byte for byte what they were; the fragment is kept.
    assert journal.read_bytes().startswith(before)
    assert (tmp_path / "study.log.torn").read_bytes() == fragment + b"\n"
    for line in journal.read_bytes().splitlines():
        assert isinstance(json.loads(line), dict)


def test_a_fragment_already_joined_to_a_record_is_repaired_on_open(tmp_path: Path) -> None:
    """A journal written by plain Optuna (or an older vitsweep) after a torn write holds the
    fragment and the next record on one line, and Optuna refuses to read on from it."""
    journal = tmp_path / "study.log"
    first = _journal_ctx(tmp_path, n_trials=2)
    run_study(first, launch, recorder(first))
    _tear(journal)
    plain = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    study = optuna.load_study(study_name=NAME, storage=plain)
    study.set_user_attr("written after the tear", True)  # lands right after the fragment
    with pytest.raises(ValueError):  # from here on plain Optuna cannot read the study
        study.set_user_attr("and one more", 1)
    ctx = _journal_ctx(tmp_path, n_trials=4)
    run_study(ctx, launch, recorder(ctx))
    study = optuna.load_study(study_name=NAME, storage=open_storage(ctx.storage_url))
    assert study.user_attrs["written after the tear"] is True  # the joined record survived
    assert len(_complete_numbers(ctx.storage_url)) == 4


def test_a_study_whose_baseline_failed_says_so_and_still_reports(tmp_path: Path) -> None:
    def failing_baseline(batch: list[list[str]]) -> list[Outcome]:
        out = launch(batch)
        for overrides, outcome in zip(batch, out, strict=True):
            if not any(o.startswith("token.r=") for o in overrides):
                outcome.metrics, outcome.error = None, "RuntimeError: out of memory (baseline)"
        return out

    ctx = make_ctx(tmp_path, n_trials=3, wandb=False)
    run_study(ctx, failing_baseline, recorder(ctx))
    report = ctx.study_dir / "report"
    results = yaml.safe_load((report / "results.yaml").read_text())
    assert results["baseline"] is None and results["headline"] == []
    assert results["baseline_note"] == (
        "baseline trial 0 FAILED: RuntimeError: out of memory (baseline)"
    )
    assert len(results["pareto"]) >= 1  # the front itself does not need the baseline
    page = (report / "report.html").read_text()
    assert "baseline trial 0 FAILED" in page
