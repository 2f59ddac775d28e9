"""The classification and optimizer tasks through the whole product: a real short offline
`discovery run` each, its archive on the dashboard (AppTest), and `discovery export` of its
winners imported in a fresh interpreter and used the way the field uses such objects."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from discovery.archive import Archive

ROOT = Path(__file__).resolve().parents[2]

USE_EXPORTED = {
    # a discovered classification loss as a torch.nn.CrossEntropyLoss stand-in
    "classification": """
import torch, exported
torch.manual_seed(0)
model = torch.nn.Linear(4, 3)
x, y = torch.randn(96, 4), torch.randint(0, 3, (96,))
for name in exported.REGISTRY:
    criterion = exported.loss_module(name)
    first = None
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(30):
        loss = criterion(model(x), y)
        opt.zero_grad(); loss.backward(); opt.step()
        first = float(loss) if first is None else first
    assert torch.isfinite(loss), name
    print(name, first, float(loss))
""",
    # a discovered update rule as a torch.optim.Optimizer
    "optimizer": """
import torch, exported
torch.manual_seed(0)
x = torch.randn(64, 5); y = x.sum(1, keepdim=True)
for name in exported.REGISTRY:
    model = torch.nn.Linear(5, 1)
    opt = exported.make_optimizer(name, model.parameters(), lr=0.01)
    assert isinstance(opt, torch.optim.Optimizer)
    first = None
    for _ in range(40):
        loss = torch.nn.functional.mse_loss(model(x), y)
        opt.zero_grad(); loss.backward(); opt.step()
        first = float(loss) if first is None else first
    assert float(loss) < first, (name, first, float(loss))
    print(name, first, float(loss))
""",
}


@pytest.mark.parametrize("task", sorted(USE_EXPORTED))
def test_run_dashboard_and_export(task, short_run_db, tmp_path, monkeypatch):
    db = short_run_db(task=task, budget=6)  # the same run the task's own test_run.py uses
    with Archive.open_readonly(db) as archive:
        (run,) = archive.list_runs()
        assert run["status"] == "finished" and run["task"] == task
        ok = [r for r in archive.candidates(run["id"], status="ok") if not r.is_baseline]
    assert ok, "the short run produced no scored candidate"
    best = max(ok, key=lambda r: r.fitness)

    # dashboard: the leaderboard lists the run's candidates, the candidate page shows the winner
    monkeypatch.setenv("DISCOVERY_DB", str(db))
    board = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    board.run()
    assert not board.exception, [e.value for e in board.exception]
    shown = "\n".join(m.value for m in board.markdown)
    assert best.id in shown and task in shown
    page = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    page.query_params["candidate"] = best.id
    page.run()
    assert not page.exception, [e.value for e in page.exception]
    assert any("def " in c.value and best.code.strip().splitlines()[-1].strip() in c.value for c in page.code)

    # export: a plain module that imports without this package and works in a torch loop
    out = tmp_path / "exported.py"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "discovery.cli",
            "export",
            "--db",
            str(db),
            "--run",
            run["id"],
            "--top",
            "2",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    used = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys\n" + USE_EXPORTED[task] + "\nassert not any(m.startswith('discovery') for m in sys.modules)",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert used.returncode == 0, used.stderr[-2000:]
    assert len(used.stdout.strip().splitlines()) >= 1
