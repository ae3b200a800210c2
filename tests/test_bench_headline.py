"""`make bench` writes the README's results table and its first paragraph's headline sentence
from one headline section, so the two cannot disagree (they once quoted 7.0x and 12.3x for the
same study)."""

from __future__ import annotations

from pathlib import Path

import yaml

from vitsweep.bench import headline
from vitsweep.bench.__main__ import SUMMARY_END, SUMMARY_START, update_readme

MEMBER = {
    "number": 7,
    "test_accuracy": 0.9452,
    "test_accuracy_lo": 0.9397,
    "test_accuracy_hi": 0.9501,
    "test_delta_pts": 1.32,
    "test_delta_lo_pts": 0.7565,
    "test_delta_hi_pts": 1.865,
    "accuracy_delta_pts": 1.211,
    "throughput_x": 12.29,
    "params_x": 11.11,
    "flops_x": 10.61,
    "bytes_x": 34.76,
    "energy_x": 12.29,
    "energy_source": "estimate",
}
# faster and smaller, but 3 points less accurate: not the member the sentence is about
WEAKER = {
    **MEMBER,
    "number": 9,
    "test_delta_pts": -3.0,
    "test_delta_lo_pts": -3.5,
    "test_delta_hi_pts": -2.5,
    "throughput_x": 30.0,
    "params_x": 40.0,
    "flops_x": 40.0,
}


def _results(tmp_path: Path) -> Path:
    report = tmp_path / "report"
    report.mkdir()
    doc = {
        "study": "s",
        "baseline": 0,
        "n_complete": 12,
        "pareto": [],
        "headline": [MEMBER, WEAKER],
        "notes": [],
    }
    (report / "results.yaml").write_text(yaml.safe_dump(doc))
    return report / "results.yaml"


def test_the_first_paragraph_and_the_table_come_from_one_section(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(
        f'# x\n\nratios ("{SUMMARY_START}7.0x throughput, stale{SUMMARY_END}").\n\n'
        "<!-- bench:start -->\nold table\n<!-- bench:end -->\ntail\n"
    )
    sections = headline.sections(_results(tmp_path), "s")
    update_readme({"headline": sections}, readme)
    doc = readme.read_text()
    sentence = doc.split(SUMMARY_START)[1].split(SUMMARY_END)[0]
    # The member the target is about (>= 10x on all three ratios and the most accurate), with
    # its ratios and interval as the table shows them.
    assert sentence == (
        "12.3x throughput, 11.1x fewer params, +1.32 points [+0.76, +1.86] on held-out images"
    )
    assert "stale" not in doc and "old table" not in doc and doc.endswith("tail\n")
    table = doc.split("<!-- bench:start -->")[1]
    assert "| 7 | 0.9452 |" in table and "| 9 |" in table
    # Rewriting again with the same sections changes nothing.
    update_readme({"headline": sections}, readme)
    assert readme.read_text() == doc


def test_a_section_run_alone_keeps_the_others_blocks(tmp_path: Path) -> None:
    """`--only headline` on a machine that never ran the ToMe bench: the README keeps the ToMe
    block it has, rewrites the headline one, and lays both out in the sections' order."""
    readme = tmp_path / "README.md"
    readme.write_text(
        "<!-- bench:start -->\n<!-- bench:headline -->\nstale\n<!-- /bench:headline -->\n\n"
        "<!-- bench:tome -->\n#### ToMe\n| r | x |\n<!-- /bench:tome -->\n<!-- bench:end -->\n"
    )
    update_readme({"headline": headline.sections(_results(tmp_path), "s")}, readme)
    doc = readme.read_text()
    assert "stale" not in doc and "#### ToMe\n| r | x |\n<!-- /bench:tome -->" in doc
    assert doc.index("<!-- bench:tome -->") < doc.index("<!-- bench:headline -->")
    assert "| 7 | 0.9452 |" in doc.split("<!-- bench:headline -->")[1]


def test_without_a_study_the_sentence_is_left_alone(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    text = f"{SUMMARY_START}kept{SUMMARY_END}\n<!-- bench:start -->\n<!-- bench:end -->\n"
    readme.write_text(text)
    update_readme({"headline": headline.sections(tmp_path / "missing.yaml", "s")}, readme)
    assert f"{SUMMARY_START}kept{SUMMARY_END}" in readme.read_text()


def test_speed_figures_name_the_cpu_and_its_matrix_units() -> None:
    from vitsweep.measure.host import describe

    amx = "model name\t: Intel(R) Xeon(R) Platinum\nflags\t\t: fpu avx2 avx512f amx_bf16 amx_int8 "
    amx += "avx512_bf16 avx512_fp16 avx512_vnni\n"
    epyc = "model name\t: AMD EPYC 9B14\nflags\t\t: fpu avx2 avx512f avx512_bf16 avx512_vnni\n"
    said = describe(amx)
    assert said.startswith("Intel(R) Xeon(R) Platinum (") and "AMX-BF16" in said
    assert "no AMX" not in said and "no AVX512-BF16" not in said
    said = describe(epyc)
    assert said.startswith("AMD EPYC 9B14 (") and "AVX512-BF16" in said and "no AMX" in said
    assert "no AVX512-BF16" in describe("model name\t: x\nflags\t\t: avx2 avx512f\n")
    assert describe().endswith(" cores")  # this machine, whatever it is
