"""The dashboard in a real browser: ``discovery dashboard`` serves it on 127.0.0.1, Debian's
headless Chromium (driven by playwright, never ``playwright install``) clicks from the
leaderboard into a candidate, watches a run page refresh while the run writes to the
archive, and saves screenshots. Without Chromium the test is skipped, or fails under CI=true.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from discovery.archive import Archive
from discovery.dashboard import data

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WAIT_MS = 60_000


def _need(condition: bool, reason: str) -> None:
    if not condition:
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(short_run_db, tmp_path):
    """``discovery dashboard`` over a copy of a real short run's archive that a writer has reopened."""
    db = tmp_path / "runs.db"
    with sqlite3.connect(f"file:{short_run_db()}?mode=ro", uri=True) as src, sqlite3.connect(db) as dst:
        src.backup(dst)
    port = _free_port()
    log = (tmp_path / "dashboard.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "discovery.cli", "dashboard", "--db", str(db), "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(url + "_stcore/health", timeout=2) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None, (tmp_path / "dashboard.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "the dashboard did not start in 90 s"
            time.sleep(0.3)
        yield url, db
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the CLI and the streamlit server it started
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def test_click_from_leaderboard_into_candidate_and_watch_a_live_run(server, tmp_path):
    _need(CHROMIUM.is_file(), f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError:
        _need(False, "playwright is not installed (pip install playwright)")
    url, db = server
    with Archive.open_readonly(db) as archive:
        (run,) = archive.list_runs()
        best = archive.leaderboard(limit=1)[0]
        archive_rows = archive.candidates(run["id"])
    shots = tmp_path / "screenshots"
    shots.mkdir()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(WAIT_MS)
            expect.set_options(timeout=WAIT_MS)
            page.goto(url)
            board = page.locator("table#leaderboard")
            expect(board).to_be_visible()
            first = board.locator("tbody tr").first
            expect(first.locator("td").nth(0)).to_have_text("1")
            expect(first.locator("td").nth(1)).to_contain_text(best.name)
            expect(page.get_by_test_id("stMetricValue").first).to_have_text(str(len(archive_rows)))
            page.wait_for_timeout(500)
            page.screenshot(path=str(shots / "leaderboard.png"))

            first.get_by_role("link", name=best.name, exact=True).click()
            page.wait_for_url(re.compile(rf"\?candidate={best.id}$"))
            expect(page.locator("h1").first).to_have_text(best.name)
            fitness = data.fmt_ci(best.fitness, best.fitness_ci_low, best.fitness_ci_high)
            expect(page.get_by_test_id("stMetricValue").first).to_have_text(fitness)
            code_line = next(line for line in best.code.splitlines() if line.startswith("def "))
            expect(page.get_by_test_id("stCode").first).to_contain_text(code_line)
            expect(page.get_by_text("Per configuration, against the baselines")).to_be_visible()
            page.get_by_text("Per configuration, against the baselines").scroll_into_view_if_needed()
            expect(page.locator("canvas, svg.marks").first).to_be_attached()
            page.locator("h1").first.scroll_into_view_if_needed()
            page.screenshot(path=str(shots / "candidate.png"))

            # a run that is going: the page refreshes by itself when the run writes a candidate
            with Archive(db) as writer:
                writer.reopen_run(run["id"])
                page.goto(f"{url}?run={run['id']}")
                expect(page.get_by_text("Live: this page re-reads the archive")).to_be_visible()
                expect(page.locator("table#run-candidates")).to_be_visible()
                added = writer.add_candidate(
                    run["id"],
                    name="arrived-while-watching",
                    code="def loss(): pass\n",
                    code_hash="browser-live",
                    proposer="test",
                )
                writer.update_candidate(added.id, status="crashed", failed_stage="train", reason="boom at line 1")
                expect(page.locator("table#run-candidates")).to_contain_text("arrived-while-watching")
                expect(page.locator("table#run-candidates")).to_contain_text("boom at line 1")
                expect(page.locator("table#run-candidates")).to_contain_text("crashed at train")  # status at stage
                page.screenshot(path=str(shots / "run.png"))
                # the agent graph, drawn by Streamlit's Mermaid from LangGraph's own text
                graph = page.get_by_test_id("stMermaidChart").locator("img")
                graph.scroll_into_view_if_needed()
                expect(graph).to_be_visible()
                expect(page.get_by_test_id("stMermaidError")).to_have_count(0)
                drawn = graph.evaluate("async img => [img.naturalWidth, await (await fetch(img.src)).text()]")
                assert drawn[0] > 200 and "record_failure" in drawn[1] and "extra_seeds" in drawn[1]  # the SVG
                page.screenshot(path=str(shots / "graph.png"))
                writer.finish_run(run["id"], "finished")
                expect(page.locator("p", has_text="status finished")).to_be_visible()
                expect(page.get_by_text("Live: this page re-reads the archive")).to_have_count(0)
        finally:
            browser.close()
    for name in ("leaderboard", "candidate", "run", "graph"):
        assert (shots / f"{name}.png").stat().st_size > 10_000
