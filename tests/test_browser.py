"""What the user opens, opened in a real browser: report.html and optuna-dashboard's study page,
rendered by headless Chromium (Debian's `chromium`, installed here when missing and we are root).

Both pages are JavaScript apps (plotly; React + plotly), so a file that exists proves nothing:
the checks read the DOM after the scripts ran (`--dump-dom` with a virtual-time budget) and
Chromium's console log. Screenshots go to the test's tmp dir and to multirun/test-artifacts/.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.request
from html.parser import HTMLParser
from pathlib import Path

import optuna
import pytest

from tests.conftest import BIN
from tests.fakestudy import FIRST_LAUNCH, NAME, make_ctx, run
from vitsweep.search.study import SweepContext
from vitsweep.track.html import figures
from vitsweep.track.pareto import study_table

ARTIFACTS = Path(__file__).resolve().parents[1] / "multirun" / "test-artifacts"
# A container has no sandbox, no GPU and a small /dev/shm; WebGL (the 3-D plot) falls back to
# SwiftShader, which newer Chromium only does when asked.
HEADLESS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--enable-unsafe-swiftshader",
    "--hide-scrollbars",
    "--no-first-run",
    "--mute-audio",
)
# Console lines that mean the page's scripts broke (Chromium logs every console message at INFO).
JS_ERROR = re.compile(r"Uncaught|\b(Type|Reference|Syntax|Range)Error\b|Failed to load resource")


def _find_chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _apt_install_chromium() -> str:
    """Debian's chromium, as `make test` installs PostgreSQL: apt lists refreshed if needed."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-qq", "chromium"]
    proc = subprocess.run(install, env=env, capture_output=True, text=True, timeout=1200)
    if proc.returncode != 0:  # a fresh machine has no package lists yet
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, timeout=600)
        proc = subprocess.run(install, env=env, capture_output=True, text=True, timeout=1200)
    return (proc.stdout + proc.stderr)[-2000:]


@pytest.fixture(scope="session")
def chromium() -> str:
    return require_chromium()


def require_chromium() -> str:
    """Chromium's path; installed first when missing and we may (root, apt-get). Without it the
    tests fail under CI (a browser test that cannot run is a failure there) and skip locally."""
    path = _find_chromium()
    detail = ""
    if path is None and os.geteuid() == 0 and shutil.which("apt-get"):
        detail = _apt_install_chromium()
        path = _find_chromium()
    if path is None:
        reason = (
            "headless Chromium is needed and was not found on PATH (chromium, chromium-browser);"
            " install it as root with `apt-get install -y chromium` (Debian)"
            + (f"; apt-get said: {detail}" if detail else "")
        )
        if os.environ.get("CI"):
            pytest.fail(reason)  # in CI a browser test that does not run is a failure
        pytest.skip(reason)
    return path


def browse(chromium: str, profile: Path, *args: str, timeout: float = 120) -> tuple[str, str]:
    """Run headless Chromium once with its own profile (other Chromiums may be running);
    return (stdout, stderr)."""
    proc = subprocess.run(
        [chromium, *HEADLESS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, f"chromium {' '.join(args)} failed:\n{proc.stderr[-3000:]}"
    return proc.stdout, proc.stderr


def js_errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if ":CONSOLE" in line and JS_ERROR.search(line)]


def keep(artifact: Path) -> None:
    """Also keep the artifact where a human looks after a run (multirun/ is git-ignored)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shutil.copy2(artifact, ARTIFACTS / artifact.name)


class Subtree(HTMLParser):
    """Text and `point` marks (plotly's scatter markers) inside the element with one id."""

    VOID = frozenset("area base br col embed hr img input link meta source track wbr".split())

    def __init__(self, element_id: str) -> None:
        super().__init__()
        self.element_id, self.depth, self.found = element_id, 0, False
        self.points, self.texts = 0, []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if self.depth == 0 and a.get("id") == self.element_id:
            self.found = True
            self.depth = 0 if tag in self.VOID else 1
            return
        if self.depth:
            self.points += "point" in (a.get("class") or "").split()
            self.depth += tag not in self.VOID

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self.depth:
            self.points += "point" in (dict(attrs).get("class") or "").split()

    def handle_endtag(self, tag: str) -> None:
        if self.depth and tag not in self.VOID:
            self.depth -= 1

    def handle_data(self, data: str) -> None:
        if self.depth and data.strip():
            self.texts.append(data.strip())


def subtree(dom: str, element_id: str) -> Subtree:
    parsed = Subtree(element_id)
    parsed.feed(dom)
    return parsed


@pytest.fixture
def study(tmp_path: Path) -> tuple[SweepContext, optuna.Study]:
    """A study whose front changed on the way (4 complete trials), its report. Its energy is an
    estimate, which gets no panel of its own: model_bytes (xray's fourth objective) makes the
    three objectives of the 3-D view."""
    ctx = make_ctx(tmp_path / "multirun", n_trials=4, wandb=False)
    objectives = {**ctx.sweeper.objectives, "model_bytes": "minimize"}
    ctx = dataclasses.replace(ctx, sweeper=dataclasses.replace(ctx.sweeper, objectives=objectives))
    return ctx, run(ctx, *FIRST_LAUNCH)


def test_report_html_renders_every_plot_without_script_errors(
    chromium: str, study: tuple[SweepContext, optuna.Study], tmp_path: Path
) -> None:
    ctx, loaded = study
    report = ctx.study_dir / "report" / "report.html"
    table = study_table(loaded, ctx.sweeper.objectives)
    expected = figures(table, table.hypervolume)
    titles = [title for title, _ in expected]
    assert "3-D" in titles and "hypervolume" in titles
    assert {"accuracy by param:token.r", "throughput by param:token.r"} <= set(titles)

    dom, log = browse(
        chromium,
        tmp_path / "profile",
        "--enable-logging=stderr",
        "--v=0",
        "--virtual-time-budget=10000",
        "--dump-dom",
        report.as_uri(),
    )
    assert not js_errors(log), "\n".join(js_errors(log))
    # plotly built every figure: one plot container per figure, SVG for 2-D, WebGL for 3-D.
    assert dom.count('class="plot-container plotly"') == len(expected)
    assert dom.count('class="main-svg"') >= len(expected)
    assert 'class="gl-container"' in dom or "<canvas" in dom
    assert "Pareto front" in dom and "Headline" in dom

    shot = tmp_path / "report.png"
    browse(
        chromium,
        tmp_path / "profile",
        "--virtual-time-budget=10000",
        "--window-size=1400,1000",
        f"--screenshot={shot}",
        report.as_uri(),
    )
    assert shot.stat().st_size > 10_000
    keep(shot)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_dashboard(proc: subprocess.Popen, url: str, log: Path, timeout: float = 90) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"optuna-dashboard exited {proc.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                return json.load(r)
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"optuna-dashboard silent on {url} for {timeout} s:\n{log.read_text()}")


def test_dashboard_shows_the_pareto_front_of_the_study(
    chromium: str, study: tuple[SweepContext, optuna.Study], tmp_path: Path
) -> None:
    """What `make dashboard` starts (optuna-dashboard on the study's storage), in a browser."""
    ctx, loaded = study
    complete = [t for t in loaded.trials if t.state.name == "COMPLETE"]
    port = _free_port()
    log = tmp_path / "dashboard.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [
                str(BIN / "optuna-dashboard"),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                ctx.storage_url,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        base = f"http://127.0.0.1:{port}"
        studies = _wait_for_dashboard(proc, f"{base}/api/studies", log)["study_summaries"]
        (study_id,) = [s["study_id"] for s in studies if s["study_name"] == NAME]
        page = f"{base}/dashboard/studies/{study_id}"

        dom, console = browse(
            chromium,
            tmp_path / "profile",
            "--enable-logging=stderr",
            "--v=0",
            "--virtual-time-budget=15000",
            "--dump-dom",
            page,
        )
        assert not js_errors(console), "\n".join(js_errors(console))
        assert f"{NAME} (id={study_id})" in dom  # the study's own page
        front = subtree(dom, "graph-pareto-front")
        assert front.found, "no Pareto front plot on the study page"
        assert "Pareto Front" in dom
        assert front.points == len(complete) == 4  # one marker per trial, front and dominated
        assert "accuracy" in dom and "throughput" in dom  # the objectives by name

        shot = tmp_path / "dashboard-pareto.png"
        browse(
            chromium,
            tmp_path / "profile",
            "--virtual-time-budget=15000",
            "--window-size=1400,1000",
            f"--screenshot={shot}",
            page,
        )
        assert shot.stat().st_size > 10_000
        keep(shot)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
