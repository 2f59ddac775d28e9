"""A user's own task file given by path (`--task path/to/task.py`), through the real sandbox."""

import subprocess
import sys
from pathlib import Path

from discovery.archive import Archive
from discovery.evaluation import Evaluator
from discovery.tasks import get_task
from sandbox.host.local import LocalSandbox

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "regression_task.py"


def test_tasks_command_shows_a_task_file_in_full():
    proc = subprocess.run(
        [sys.executable, "-m", "discovery.cli", "tasks", "--task", str(EXAMPLE)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "def loss(pred, target)" in proc.stdout and "mse, mae, huber, log_cosh" in proc.stdout
    missing = subprocess.run(
        [sys.executable, "-m", "discovery.cli", "tasks", "--task", "no/such_task.py"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert missing.returncode == 2 and "does not exist" in missing.stderr


def test_task_file_candidates_run_in_the_sandbox_and_robust_losses_win_under_outliers():
    task = get_task(str(EXAMPLE))
    assert task.ref == str(EXAMPLE)  # what jobs carry: the sandbox gets a copy of the file
    evaluator = Evaluator(task)
    with LocalSandbox() as box:
        reports = {
            name: evaluator.evaluate(task.baselines[name], box, "discover", configs=["outliers30"], seeds=[0, 1])
            for name in ("mse", "huber", "mae")
        }
        broken = evaluator.evaluate(
            task.baselines["mse"].replace("** 2", "** 2 * float('nan')"), box, "discover", configs=["clean"], seeds=[0]
        )
    assert all(r.ok for r in reports.values()), {n: r.one_line() for n, r in reports.items()}
    assert reports["huber"].fitness.mean > reports["mse"].fitness.mean + 0.5
    assert reports["mae"].fitness.mean > reports["mse"].fitness.mean + 0.5
    assert not broken.ok and "NaN" in broken.reason


def test_offline_run_on_a_task_file(short_run_db):
    db = short_run_db(task=str(EXAMPLE), budget=4)
    with Archive.open_readonly(db) as archive:
        (run,) = archive.list_runs()
        assert run["status"] == "finished" and run["config"]["task"] == str(EXAMPLE)
        rows = archive.candidates(run["id"], order_by_fitness=False)
        assert [r.name for r in rows if r.is_baseline] == ["mse"]
        ok = [r for r in rows if r.status == "ok"]
        assert len(ok) >= 2
        assert all(set(r.per_config) == {"clean", "outliers10", "outliers30"} for r in ok)
