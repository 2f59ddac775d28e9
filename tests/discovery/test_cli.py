"""The ``discovery`` command as a user runs it: real console script, real sandbox."""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

DPO = textwrap.dedent("""
    import torch
    import torch.nn.functional as F


    def loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
        h = (policy_chosen_logps - reference_chosen_logps) - (policy_rejected_logps - reference_rejected_logps)
        return -F.logsigmoid(beta * h)
""")

HEAD = "import torch\nimport torch.nn.functional as F\n\n\n"
SIG = "def loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):\n"
H = "    h = (policy_chosen_logps - reference_chosen_logps) - (policy_rejected_logps - reference_rejected_logps)\n"


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "discovery.cli", *args], capture_output=True, text=True, timeout=timeout
    )


BAD = {  # case -> (source, stage, status, fragment of the reason)
    "parse": ("def loss(a, b:\n    return a\n", "parse", "parse", "line 1"),
    "missing": (HEAD + "def other(x):\n    return x\n", "policy", "policy", "no top-level function named 'loss'"),
    "signature": (HEAD + "def loss(a, b):\n    return a - b\n", "contract", "invalid", "must take 5 arguments"),
    "scalar": (HEAD + SIG + H + "    return -F.logsigmoid(beta * h).mean()\n", "contract", "invalid", "shape ()"),
    "nan": (HEAD + SIG + H + "    return h * float('nan')\n", "contract", "invalid", "NaN"),
    "no_grad": (HEAD + SIG + H + "    return torch.zeros_like(h)\n", "contract", "invalid", "no gradient"),
    # an exception raised during the contract check is an error at that stage, not a contract violation
    "raises": (HEAD + SIG + H + "    raise ValueError('boom')\n", "contract", "error", "line 7"),
    "nan_in_training": (
        HEAD + SIG + H + "    scale = float('nan') if h.shape[0] > 10 else 1.0  # NaN only at training batch size\n"
        "    return -F.logsigmoid(beta * h) * scale\n",
        "train",
        "invalid",
        "NaN",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_candidate_gives_one_line_and_nonzero_exit(case, tmp_path):
    source, stage, status, fragment = BAD[case]
    path = tmp_path / f"{case}.py"
    path.write_text(source)
    proc = run_cli("evaluate", str(path), "--task", "preference")
    assert proc.returncode == 1, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"{stage} stage failed ({status}): "), lines[0]
    assert fragment in lines[0]
    assert "Traceback" not in proc.stderr + proc.stdout


def test_usage_errors_are_one_line(tmp_path):
    for args in (
        ["evaluate", str(tmp_path / "absent.py")],
        ["evaluate", __file__, "--task", "nope"],
        ["evaluate", __file__, "--suite", "nope"],
    ):
        proc = run_cli(*args)
        assert proc.returncode == 2
        assert proc.stderr.strip().startswith("error:") and len(proc.stderr.strip().splitlines()) == 1


def test_json_output_is_deterministic(tmp_path):
    path = tmp_path / "dpo.py"
    path.write_text(DPO)
    first = run_cli("evaluate", str(path), "--json", "--seeds", "1")
    second = run_cli("evaluate", str(path), "--json", "--seeds", "1")
    assert first.returncode == 0, first.stderr
    a, b = json.loads(first.stdout), json.loads(second.stdout)
    assert a["status"] == "ok" and a["fitness"]["n"] == 1
    assert a["fitness"] == b["fitness"]
    assert [c["per_seed"] for c in a["configs"]] == [c["per_seed"] for c in b["configs"]]
    assert {c["config"] for c in a["configs"]} == {"clean", "noise20", "noise40", "small_data", "beta05_len8"}
    assert "bubblewrap" in " ".join(a["sandbox"]["isolation"])


def test_tasks_lists_the_slot():
    proc = run_cli("tasks")
    assert proc.returncode == 0
    assert "preference" in proc.stdout and "def loss(policy_chosen_logps" in proc.stdout


# ---- conventions: version, python -m, exit codes ---------------------------------------------


def test_version_from_the_command_and_python_dash_m():
    from discovery import __version__

    for cmd in (["discovery", "--version"], [sys.executable, "-m", "discovery", "--version"]):
        if cmd[0] == "discovery" and shutil.which("discovery") is None:
            pytest.fail("the discovery console script is not on PATH")
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0 and proc.stdout.strip() == f"discovery {__version__}", proc


def test_shell_completion_is_offered():
    proc = subprocess.run(
        [sys.executable, "-m", "discovery", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert "--install-completion" in proc.stdout and "--show-completion" in proc.stdout


def test_usage_error_exits_2():
    proc = subprocess.run(
        [sys.executable, "-m", "discovery", "no-such-command"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2 and "No such command" in proc.stderr


def test_an_internal_error_is_one_line_and_exit_1():
    code = (
        "import discovery.cli as cli\n"
        "@cli.app.command('boom')\n"
        "def boom() -> None:\n"
        "    raise RuntimeError('a bug')\n"
        "cli.main()\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, "boom"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1, proc
    assert proc.stderr.strip() == "internal error: RuntimeError: a bug (DISCOVERY_DEBUG=1 shows the traceback)"


def test_dashboard_stops_streamlit_on_sigterm(tmp_path):
    """A service manager's SIGTERM must not orphan streamlit on its port."""
    import signal
    import socket
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    health = f"http://127.0.0.1:{port}/_stcore/health"
    proc = subprocess.Popen(
        [sys.executable, "-m", "discovery", "dashboard", "--db", str(tmp_path / "none.db"), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                if urllib.request.urlopen(health, timeout=2).read() == b"ok":
                    break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("the dashboard never became healthy")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        time.sleep(1)
        with pytest.raises(OSError):
            urllib.request.urlopen(health, timeout=2)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


# ---- show: the outcome of a candidate, read from an archive written through the Archive API ------


def test_show_says_status_at_stage_the_error_and_the_original_of_a_duplicate(tmp_path):
    from discovery.archive import Archive
    from sandbox.base import Status

    db = tmp_path / "runs.db"
    code = HEAD + SIG + H + "    return -F.logsigmoid(beta * hx)\n"
    with Archive(db) as archive:
        run = archive.create_run("preference", {"task": "preference"})
        original = archive.add_candidate(run, name="dpo", code=DPO, code_hash="dpo", proposer="baseline").id
        archive.update_candidate(
            original, status=Status.OK, fitness=0.5, fitness_ci_low=0.4, fitness_ci_high=0.6, n_seeds=2
        )
        raised = archive.add_candidate(
            run, name="raises", code=code, code_hash="r", proposer="mutation", parents=[original]
        ).id
        archive.update_candidate(
            raised,
            status=Status.ERROR,
            failed_stage="contract",
            reason="NameError: name 'hx' is not defined (line 7: `return ...`)",
            error_class="NameError",
            error_line=7,
            error_message="name 'hx' is not defined",
        )
        invalid = archive.add_candidate(run, name="scalar", code=code, code_hash="s", proposer="mutation").id
        archive.update_candidate(
            invalid, status=Status.INVALID, failed_stage="contract", reason="loss returns shape (), expected (10,)"
        )
        duplicate = archive.add_duplicate(
            run, original_id=original, code=DPO, code_hash="dpo", name="again", proposer="mutation"
        )
    expected = {
        raised: [
            "status: error at contract: NameError line 7 — name 'hx' is not defined",
            "reason: NameError: name 'hx' is not defined (line 7: `return ...`)",
            f"lineage: raises ({raised}) <- dpo ({original})",
        ],
        invalid: ["status: invalid at contract: loss returns shape (), expected (10,)"],
        duplicate: [
            f"status: duplicate at dedup: same normalized syntax tree as {original} (dpo); not evaluated",
            f"duplicate of: {original} (discovery show {original} --db {db})",
        ],
        original: ["status: ok", "fitness (discover): 0.5000 ± 0.1000 over 2 seeds; held-out: -"],
    }
    for cid, lines in expected.items():
        proc = subprocess.run(
            ["discovery", "show", cid, "--db", str(db)],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "COLUMNS": "300"},
        )
        assert proc.returncode == 0, proc.stderr
        shown = proc.stdout.splitlines()
        for line in lines:
            assert line in shown, (line, proc.stdout)
    assert not any(line.startswith("reason:") for line in shown)  # an ok candidate has none
