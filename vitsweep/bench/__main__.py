"""`python -m vitsweep.bench`: run the benchmark sections, print them, save JSON under
multirun/bench/, and regenerate the README's results table from what was just measured."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import re
import time
from pathlib import Path

import torch

from vitsweep.bench.common import Section

SECTIONS = (
    "sweeper", "supernet", "tome", "tome_schedule", "precision", "mixed", "tq", "tq_forward",
    "runtime", "measure", "scaleout", "headline",
)  # fmt: skip
# Sections too long for `make bench` (`make bench-search` runs search; `--only bootstrap` trains
# six supernets, about 2 h): never run by default, but their saved JSON joins the README table
# like any other section's.
SAVED_ONLY = ("search", "search-real", "bootstrap")
README = Path(__file__).resolve().parents[2] / "README.md"
START, END = "<!-- bench:start -->", "<!-- bench:end -->"
# The first paragraph's headline sentence, rewritten with the table so the two cannot disagree.
SUMMARY_START, SUMMARY_END = "<!-- headline:start -->", "<!-- headline:end -->"


def _cell(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def markdown(sections: list[Section]) -> str:
    out = []
    for s in sections:
        out.append(f"#### {s.title}\n")
        if s.rows:
            cols = list(s.rows[0])
            out.append("| " + " | ".join(cols) + " |")
            out.append("|" + "---|" * len(cols))
            out += ["| " + " | ".join(_cell(r.get(c, "")) for c in cols) + " |" for r in s.rows]
            out.append("")
        for t in s.targets:
            mark = "met" if t.met else "**missed**"
            out.append(f"- {t.name}: {_cell(t.value)} (target {t.goal}) — {mark}")
        out += [f"- {n}" for n in s.notes]
        out.append("")
    return "\n".join(out)


def machine() -> str:
    from vitsweep.measure.host import describe

    return (
        f"{describe()}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}, {time.strftime('%Y-%m-%d')}"
    )


def _between(doc: str, start: str, end: str, text: str) -> str:
    if start not in doc or end not in doc:
        return doc
    head, rest = doc.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}{text}{end}{tail}"


def _blocks(doc: str) -> dict[str, str]:
    """The README's results, one block per bench module, by module name."""
    if START not in doc or END not in doc:
        return {}
    inner = doc.split(START, 1)[1].split(END, 1)[0]
    return dict(re.findall(r"<!-- bench:([\w-]+) -->\n(.*?)\n<!-- /bench:\1 -->", inner, re.S))


def update_readme(measured: dict[str, list[Section]], readme: Path = README) -> None:
    """The results table and, from the same sections, the first paragraph's sentence.

    `measured`: bench module name -> its sections. A module not in it keeps its block as the
    README has it, so a run of one section (or a machine that lacks the others' JSON) never
    drops what was measured before."""
    doc = readme.read_text()
    old = _blocks(doc)
    names = [*SECTIONS, *SAVED_ONLY, *sorted(set(old) - set(SECTIONS) - set(SAVED_ONLY))]
    blocks = [
        f"<!-- bench:{n} -->\n{markdown(measured[n]).strip() if n in measured else old[n]}"
        f"\n<!-- /bench:{n} -->"
        for n in names
        if n in measured or n in old
    ]
    doc = _between(doc, START, END, "\n" + "\n\n".join(blocks) + "\n")
    summary = next((s.summary for ss in measured.values() for s in ss if s.summary), "")
    if summary:
        doc = _between(doc, SUMMARY_START, SUMMARY_END, summary)
    readme.write_text(doc)


def load(path: Path) -> list[Section]:
    from vitsweep.bench.common import Target

    sections = []
    for d in json.loads(path.read_text()):
        d["targets"] = [Target(**t) for t in d["targets"]]
        sections.append(Section(**d))
    return sections


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m vitsweep.bench")
    ap.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections")
    ap.add_argument("--quick", action="store_true", help="fewer repeats: a smoke check")
    ap.add_argument("--no-readme", action="store_true", help="do not touch README.md")
    args = ap.parse_args()
    names = [n for n in args.only.split(",") if n]
    unknown = sorted(set(names) - set(SECTIONS) - set(SAVED_ONLY))
    if unknown:
        valid = ", ".join((*SECTIONS, *SAVED_ONLY))
        raise SystemExit(f"vitsweep.bench: error: --only {unknown[0]}: valid: {valid}")
    # every section's own timing loop runs on the allocator the product measures with
    from vitsweep.measure.speed import steady_host_allocator

    steady_host_allocator()
    out_dir = Path("multirun") / "bench" / ("quick" if args.quick else "")
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in names:
        t0 = time.perf_counter()
        print(f"== bench {name} ...", flush=True)
        sections = importlib.import_module(f"vitsweep.bench.{name}").run(quick=args.quick)
        for s in sections:
            s.notes.append(f"{name}: {time.perf_counter() - t0:.0f} s on {machine()}")
        (out_dir / f"{name}.json").write_text(
            json.dumps([dataclasses.asdict(s) for s in sections], indent=2, default=str)
        )
        print(markdown(sections), flush=True)
    if not args.no_readme and not args.quick:
        regenerate_readme(out_dir)


def regenerate_readme(out_dir: Path) -> None:
    """The README shows the latest full-mode run of every section saved here, this run's and
    earlier ones (the saved-only sections included); the blocks of sections never run on this
    machine stay as they are."""
    names = (*SECTIONS, *SAVED_ONLY)
    saved = {n: out_dir / f"{n}.json" for n in names if (out_dir / f"{n}.json").exists()}
    update_readme({n: load(p) for n, p in saved.items()})
    print(f"README results: {', '.join(saved) or 'nothing'} regenerated, the rest kept ({README})")


if __name__ == "__main__":
    main()
