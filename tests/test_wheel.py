"""The built wheel, installed non-editable into a fresh virtual environment, as a user meets it.

Once per module: ``python -m build`` (isolated, the default) makes the sdist and, from the
sdist, the wheel, out of a copy of the checkout's tracked and untracked-but-not-ignored files
(what a ``git clone`` holds; nothing is written into the checkout). A new virtual environment
(no system site-packages) gets ``torch`` and then the wheel with plain ``pip install``. Every
command then runs from an empty working directory with the fresh environment's own
``bin/discovery`` console script and a clean environment (no PYTHONPATH, HOME in a temporary
directory), so nothing of the checkout can be found by accident: an LLM run against the
scripted OpenAI-compatible server of ``tests/openai_server.py``, ``export``, importing the
exported module, ``evaluate`` of one of its functions, and the dashboard.

``DISCOVERY_TEST_TORCH`` (default ``torch==2.13.0``, whose CPU wheel pip finds locally
here) is what is installed before the wheel, so that pip never picks torch itself.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tarfile
import time
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pytest

from tests.openai_server import FakeOpenAIServer, Reply

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]

ROOT = Path(__file__).resolve().parents[1]
TORCH_SPEC = os.environ.get("DISCOVERY_TEST_TORCH", "torch==2.13.0")
#: the checkout's folders that are packages of the wheel, and where they land in it
PACKAGE_DIRS = {"discovery": "discovery", "sandbox": "sandbox", "prompts": "discovery/prompting/templates"}
MODEL = "openai/test-model"

SIG = "def loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):"
H = "    h = (policy_chosen_logps - reference_chosen_logps) - (policy_rejected_logps - reference_rejected_logps)"


def _reply(name: str, body: str) -> Reply:
    code = f"import torch\nimport torch.nn.functional as F\n\n\n{SIG}\n{H}\n{body}\n"
    return Reply(f"<thought>Try {name}.</thought>\n<name>{name}</name>\n<code>\n{code}</code>")


SCRIPT = [
    _reply("soft_hinge", "    return F.softplus(1 - beta * h)"),
    _reply("dpo_x15", "    return -1.5 * F.logsigmoid(beta * h)"),
    _reply("exp_loss", "    return torch.exp(-beta * h)"),
]
BUDGET = len(SCRIPT)
# one seed, one island, no leaders' extra seeds, no held-out stage: the short path through the pipeline
RUN_TOML = """
[run]
islands = 1
seeds = 1
leaders = 0
extra_seeds = 0
heldout_top = 0
seed = 1
llm_timeout = 60
llm_retries = 1
"""


# ---------------------------------------------------------------------------- helpers


def _tail(text: str | bytes | None, lines: int = 40) -> str:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return "\n".join((text or "").rstrip().splitlines()[-lines:])


def sh(
    cmd: list[str | Path],
    *,
    timeout: float,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess:
    """Run ``cmd``; on a timeout or (with ``check``) a non-zero exit, fail with its last output lines."""
    cmd = [str(c) for c in cmd]
    shown = " ".join(cmd)
    started = time.monotonic()
    try:
        proc = subprocess.run(
            cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(
            f"`{shown}` did not finish in {timeout:g} s\n--- stdout\n{_tail(exc.stdout)}\n"
            f"--- stderr\n{_tail(exc.stderr)}",
            pytrace=False,
        )
    print(f"[{time.monotonic() - started:6.1f} s] {shown} -> {proc.returncode}")
    if check and proc.returncode != 0:
        pytest.fail(
            f"`{shown}` exited with {proc.returncode}\n--- stdout\n{_tail(proc.stdout)}\n"
            f"--- stderr\n{_tail(proc.stderr)}",
            pytrace=False,
        )
    return proc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def checkout_files() -> list[str]:
    """The checkout's files as a clone would hold them (relative POSIX paths)."""
    try:
        out = subprocess.run(
            ["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            capture_output=True,
            check=True,
            timeout=60,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        out = None
    if out:
        return sorted(p for p in out.decode().split("\0") if p and (ROOT / p).is_file())
    skip = {".git", ".venv", "build", "dist", "__pycache__", ".pytest_cache", ".ruff_cache"}
    files = []
    for dirpath, dirnames, filenames in os.walk(ROOT):
        dirnames[:] = [d for d in dirnames if d not in skip and not d.endswith(".egg-info")]
        files += [(Path(dirpath) / f).relative_to(ROOT).as_posix() for f in filenames if not f.endswith(".pyc")]
    return sorted(files)


def clean_env(venv: Path, home: Path, **extra: str) -> dict[str, str]:
    """A user's shell with only the fresh environment's bin/ in front: no PYTHONPATH, no VIRTUAL_ENV."""
    env = {
        "PATH": f"{venv / 'bin'}:/usr/local/bin:/usr/bin:/bin",
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "TMPDIR": os.environ.get("TMPDIR", "/tmp"),
    }
    env.update(extra)
    return env


def pip_env(venv: Path, home: Path) -> dict[str, str]:
    """``clean_env`` plus what pip needs to reach the same indexes as the test run (its PIP_* settings,
    proxies, certificates) and the caller's pip cache, so that nothing is downloaded twice."""
    env = clean_env(venv, home)
    for key, value in os.environ.items():
        if (
            key.startswith("PIP_")
            or key.lower() in ("http_proxy", "https_proxy", "no_proxy")
            or key in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE")
        ):
            env[key] = value
    if "PIP_CACHE_DIR" not in env:
        env["PIP_CACHE_DIR"] = str(Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "pip")
    return env


# ---------------------------------------------------------------------------- fixtures


@dataclass
class Dists:
    wheel: Path
    sdist: Path
    version: str
    tree: list[str]  # the files the build was made from


@dataclass
class Installed:
    venv: Path
    home: Path
    work: Path  # the empty working directory

    @property
    def discovery(self) -> Path:
        return self.venv / "bin" / "discovery"

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    def env(self, **extra: str) -> dict[str, str]:
        return clean_env(self.venv, self.home, **extra)

    def run(self, *args: str | Path, timeout: float, check: bool = True, **extra_env: str):
        return sh([self.discovery, *args], timeout=timeout, cwd=self.work, env=self.env(**extra_env), check=check)


@pytest.fixture(scope="module")
def dists(tmp_path_factory) -> Dists:
    """sdist and wheel from ``python -m build`` over a copy of the checkout."""
    base = tmp_path_factory.mktemp("wheel-build")
    src, out = base / "src", base / "dist"
    tree = checkout_files()
    assert "pyproject.toml" in tree, f"no pyproject.toml among the checkout's files ({len(tree)} files)"
    for rel in tree:
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, src / rel)
    probe = sh([sys.executable, "-m", "build", "--version"], timeout=60, check=False)
    assert probe.returncode == 0, f"no `python -m build` ({_tail(probe.stderr, 3)}): install the dev extra"
    sh([sys.executable, "-m", "build", "--outdir", out, src], timeout=900, cwd=base)
    wheels, sdists = sorted(out.glob("*.whl")), sorted(out.glob("*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1, sorted(p.name for p in out.iterdir())
    version = wheels[0].name.split("-")[1]
    return Dists(wheel=wheels[0], sdist=sdists[0], version=version, tree=tree)


@pytest.fixture(scope="module")
def installed(dists: Dists, tmp_path_factory):
    """A fresh virtual environment with torch, then the wheel (non-editable)."""
    base = tmp_path_factory.mktemp("wheel-venv")
    venv, home, work = base / "venv", base / "home", base / "work"
    home.mkdir()
    work.mkdir()
    env = pip_env(venv, home)
    # `python -m venv` run from a virtual environment makes the new one from the base interpreter
    sh([sys.executable, "-m", "venv", venv], timeout=300, env=env)
    cfg = (venv / "pyvenv.cfg").read_text()
    assert "include-system-site-packages = false" in cfg, cfg
    py = venv / "bin" / "python"
    sh([py, "-m", "pip", "install", "--quiet", TORCH_SPEC], timeout=1200, env=env)
    sh([py, "-m", "pip", "install", "--quiet", dists.wheel], timeout=1200, env=env)
    inst = Installed(venv=venv, home=home, work=work)
    assert inst.discovery.is_file(), f"no console script {inst.discovery}"
    assert not any(work.iterdir()) and not (work / "discovery").exists()
    yield inst
    shutil.rmtree(venv, ignore_errors=True)  # about 2 GB; the working directory (runs.db) stays for a look


@pytest.fixture(scope="module")
def llm_run(installed: Installed, tmp_path_factory):
    """``discovery run --model openai/test-model`` against the scripted server: (process, db, chat requests)."""
    config = tmp_path_factory.mktemp("wheel-run-config") / "run.toml"
    config.write_text(RUN_TOML)
    with FakeOpenAIServer(SCRIPT) as server:
        proc = installed.run(
            "run",
            "--model",
            MODEL,
            "--api-base",
            server.base_url,
            "--budget",
            str(BUDGET),
            "--workers",
            "1",
            "--db",
            "runs.db",
            "--config",
            config,
            "--quiet",
            timeout=900,
        )
        requests = server.chat_requests
    return proc, installed.work / "runs.db", requests


# ---------------------------------------------------------------------------- the distributions


def test_wheel_holds_every_package_template_and_the_license(dists: Dists):
    with zipfile.ZipFile(dists.wheel) as zf:
        names = set(zf.namelist())
        dist_info = f"discovery-{dists.version}.dist-info"
        license_in_wheel = (
            zf.read(f"{dist_info}/licenses/LICENSE") if f"{dist_info}/licenses/LICENSE" in names else None
        )
        entry_points = zf.read(f"{dist_info}/entry_points.txt").decode()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"discovery", "sandbox", dist_info}, f"unexpected top-level entries: {sorted(tops)}"
    assert not [n for n in names if n.startswith("tests/") or "/tests/" in n]
    # every file of the package folders, at its place in the wheel (modules, templates, Dockerfile)
    expected = set()
    for rel in dists.tree:
        top, _, rest = rel.partition("/")
        if top in PACKAGE_DIRS and rest and "__pycache__" not in rel:
            expected.add(f"{PACKAGE_DIRS[top]}/{rest}")
    missing = sorted(expected - names)
    assert not missing, f"files of the checkout missing from {dists.wheel.name}: {missing}"
    for required in (
        "discovery/prompting/templates/system.j2",
        "discovery/prompting/templates/propose.j2",
        "discovery/prompting/templates/__init__.py",
        "sandbox/Dockerfile",
        "discovery/dashboard/entry.py",
        "discovery/cli.py",
    ):
        assert required in names, required
    # the explicit package list in pyproject.toml is the set of folders with an __init__.py, no more, no less
    tree_packages = {
        str(PurePosixPath(PACKAGE_DIRS[r.split("/")[0]], *PurePosixPath(r).parts[1:-1])).replace("/", ".")
        for r in dists.tree
        if r.split("/")[0] in PACKAGE_DIRS and r.endswith("/__init__.py")
    }
    wheel_packages = {n[: -len("/__init__.py")].replace("/", ".") for n in names if n.endswith("/__init__.py")}
    assert wheel_packages == tree_packages, (
        f"only in the tree: {sorted(tree_packages - wheel_packages)}; "
        f"only in the wheel: {sorted(wheel_packages - tree_packages)}"
    )
    # a folder of modules without __init__.py would silently stay out of the wheel
    module_dirs = {
        str(PurePosixPath(r).parent) for r in dists.tree if r.split("/")[0] in PACKAGE_DIRS and r.endswith(".py")
    }
    no_init = sorted(d for d in module_dirs if f"{d}/__init__.py" not in dists.tree)
    assert not no_init, f"folders with Python modules but no __init__.py (not shipped): {no_init}"
    assert license_in_wheel == (ROOT / "LICENSE").read_bytes(), f"{dist_info}/licenses/LICENSE missing or different"
    assert "discovery = discovery.cli:" in entry_points, entry_points


def test_sdist_holds_the_sources_prompts_and_license(dists: Dists):
    with tarfile.open(dists.sdist) as tf:
        names = {n.split("/", 1)[1] for n in tf.getnames() if "/" in n}
    for required in (
        "pyproject.toml",
        "README.md",
        "LICENSE",
        "prompts/system.j2",
        "prompts/propose.j2",
        "prompts/__init__.py",
        "sandbox/Dockerfile",
        "discovery/cli.py",
        "discovery/dashboard/entry.py",
    ):
        assert required in names, f"{required} missing from {dists.sdist.name}"
    missing = sorted(r for r in dists.tree if r.split("/")[0] in PACKAGE_DIRS and r not in names)
    assert not missing, f"package files missing from {dists.sdist.name}: {missing}"


# ---------------------------------------------------------------------------- installed


def test_installed_package_is_the_wheel_not_the_checkout(installed: Installed, dists: Dists):
    code = (
        "import json, sys, importlib.metadata as m, importlib.resources as r, discovery, sandbox, torch\n"
        "print(json.dumps({'file': discovery.__file__, 'sandbox': sandbox.__file__, 'torch': torch.__version__,"
        " 'version': m.version('discovery'), 'path': sys.path,"
        " 'templates': sorted(p.name for p in r.files('discovery.prompting.templates').iterdir()"
        " if p.name.endswith('.j2'))}))"
    )
    info = json.loads(sh([installed.python, "-c", code], timeout=120, cwd=installed.work, env=installed.env()).stdout)
    site = installed.venv / "lib"
    for key in ("file", "sandbox"):
        assert Path(info[key]).is_relative_to(site), f"{key} imported from {info[key]}, not from {site}"
    assert not [p for p in info["path"] if p and Path(p).resolve().is_relative_to(ROOT)], info["path"]
    assert info["version"] == dists.version
    assert info["templates"] == ["propose.j2", "system.j2"]
    if TORCH_SPEC.startswith("torch=="):  # installing the wheel kept the torch installed before it
        assert info["torch"].split("+")[0] == TORCH_SPEC.split("==")[1].split("+")[0], info["torch"]


#: run by the installed package: a jailed candidate (past the policy and the guard) reports what it can import
JAIL_PROBE = '''
import json
from discovery.training import run_job
from sandbox.base import Job
from sandbox.host.local import LocalSandbox, bubblewrap_problem
if bubblewrap_problem():
    raise SystemExit("no bubblewrap: " + bubblewrap_problem())
source = """
import importlib
def loss(a, b, c, d, beta):
    seen = []
    for name in ("sandbox.jail.function_server", "discovery.tasks", "discovery.tasks.preference.env"):
        try:
            importlib.import_module(name)
            seen.append(name)
        except ImportError:
            pass
    raise ValueError("importable=" + ",".join(seen))
"""
with LocalSandbox() as box:
    outcome = run_job(box, Job(task="preference", source=source, stage="contract", guarded=False))
print(json.dumps({"status": outcome.status.value, "reason": outcome.reason}))
'''


def test_an_installed_jail_sees_the_sandbox_package_and_not_the_trainer(installed: Installed):
    """Installed, both packages sit in one site-packages, which the jail binds: ``discovery/`` (tasks,
    environments, the trainer) is covered there by an empty directory (which Python would import as
    an empty namespace package: nothing of it is there), the function server's ``sandbox/`` is not."""
    out = sh([installed.python, "-c", JAIL_PROBE], timeout=300, cwd=installed.work, env=installed.env())
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["status"] == "error", result
    assert result["reason"].startswith("ValueError: importable=sandbox.jail.function_server ("), result


def test_version_from_console_script_and_python_m(installed: Installed, dists: Dists):
    out = installed.run("--version", timeout=60)
    assert dists.version in out.stdout, out.stdout
    out = sh([installed.python, "-m", "discovery", "--version"], timeout=60, cwd=installed.work, env=installed.env())
    assert dists.version in out.stdout, out.stdout


def test_llm_run_from_the_installed_wheel(llm_run):
    proc, db, requests = llm_run
    assert "finished" in proc.stdout, _tail(proc.stdout)
    # the prompts were rendered from the templates inside the wheel
    assert len(requests) == BUDGET, [r.path for r in requests]
    first_line = (ROOT / "prompts" / "system.j2").read_text().splitlines()[0]
    for req in requests:
        messages = req.json["messages"]
        system = next(m["content"] for m in messages if m["role"] == "system")
        assert system.startswith(first_line) and "## Task\npreference:" in system and SIG[:-1] in system, system[:800]
        assert req.json["model"] == MODEL.split("/", 1)[1]
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    con.row_factory = sqlite3.Row
    try:
        runs = con.execute("SELECT id, status, message FROM runs").fetchall()
        assert [r["status"] for r in runs] == ["finished"], [dict(r) for r in runs]
        rows = [
            dict(r)
            for r in con.execute(
                "SELECT name, proposer, status, reason, fitness FROM candidates "
                "WHERE is_baseline = 0 ORDER BY created_at"
            )
        ]
        calls = [dict(r) for r in con.execute("SELECT model, error, candidate_id FROM llm_calls")]
        evaluations = con.execute(
            "SELECT COUNT(*) FROM evaluations e JOIN candidates c ON c.id = e.candidate_id "
            "WHERE c.is_baseline = 0 AND e.fitness IS NOT NULL"
        ).fetchone()[0]
    finally:
        con.close()
    assert sorted(r["name"] for r in rows) == sorted(["soft_hinge", "dpo_x15", "exp_loss"]), rows
    assert all(r["proposer"] == f"llm:{MODEL}" for r in rows), rows
    assert all(r["status"] in ("ok", "culled") for r in rows), rows
    ok = [r for r in rows if r["status"] == "ok" and r["fitness"] is not None and math.isfinite(r["fitness"])]
    assert len(ok) >= 2, rows
    assert evaluations >= len(ok)
    assert len(calls) == BUDGET and not [c for c in calls if c["error"]], calls


def test_export_import_and_evaluate_from_the_installed_wheel(installed: Installed, llm_run):
    _, db, _ = llm_run
    installed.run("export", "--db", db.name, "--top", "2", "--out", "discovered.py", timeout=120)
    assert (installed.work / "discovered.py").is_file()
    code = (
        "import json, torch, discovered\n"
        "name = next(iter(discovered.REGISTRY))\n"
        "x = torch.randn(8)\n"
        "out = discovered.REGISTRY[name](x, x - 1, torch.zeros(8), torch.zeros(8), 0.1)\n"
        "print(json.dumps({'names': list(discovered.REGISTRY), 'shape': list(out.shape),"
        " 'file': discovered.__file__, 'finite': bool(torch.isfinite(out).all()),"
        " 'fitness': discovered.METADATA[name]['fitness']}))"
    )
    info = json.loads(
        sh([installed.python, "-c", code], timeout=120, cwd=installed.work, env=installed.env())
        .stdout.strip()
        .splitlines()[-1]
    )
    assert len(info["names"]) == 2 and info["shape"] == [8] and info["finite"], info
    assert Path(info["file"]).parent == installed.work, info["file"]
    name = info["names"][0]
    out = installed.run("evaluate", "discovered.py", "--function", name, "--seeds", "1", "--json", timeout=600)
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["status"] == "ok", report
    fitness = report["fitness"]["mean"]
    assert isinstance(fitness, float) and math.isfinite(fitness), report
    # the docstring's "Reproduce:" line holds: same suite, same seed, same score as in the run
    assert math.isclose(fitness, info["fitness"], abs_tol=1e-3), (fitness, info["fitness"])


def test_dashboard_from_the_installed_wheel(installed: Installed, llm_run):
    _, db, _ = llm_run
    port = free_port()
    log = installed.home / "dashboard.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen(
            [str(installed.discovery), "dashboard", "--db", db.name, "--port", str(port)],
            cwd=installed.work,
            env=installed.env(),
            stdout=fh,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        deadline, answer = time.monotonic() + 60, ""
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as resp:
                    answer = resp.read().decode().strip()
                if answer == "ok":
                    break
            except OSError:
                pass
            time.sleep(0.5)
        assert answer == "ok", f"dashboard health: {answer!r}, exit code {proc.poll()}\n{_tail(log.read_text())}"
        # Ctrl-C in a terminal: SIGINT to the whole foreground group stops discovery and streamlit, exit 0
        os.killpg(proc.pid, signal.SIGINT)
        try:
            code = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pytest.fail(f"dashboard did not stop within 30 s of SIGINT\n{_tail(log.read_text())}", pytrace=False)
        assert code == 0, f"exit code {code}\n{_tail(log.read_text())}"
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # whatever is left of the group (streamlit)
        except ProcessLookupError:
            pass
        if proc.poll() is None:
            proc.wait(timeout=10)
