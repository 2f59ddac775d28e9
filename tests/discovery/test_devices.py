"""--device: resolution, one GPU per worker, the device reaching the sandboxed job."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from discovery.devices import DeviceError, resolve_device, trainer_device, trusted_device, worker_gpus
from discovery.evaluation import Evaluator
from discovery.sandboxes import make_pool
from discovery.tasks import get_task
from sandbox.base import Job, Outcome, Sandbox, Status
from sandbox.local import bubblewrap_command

HAS_GPU = torch.cuda.is_available()


def test_auto_is_cuda_only_with_a_gpu():
    assert resolve_device("auto", gpus=0) == "cpu"
    assert resolve_device("auto", gpus=2) == "cuda"
    assert resolve_device("CPU", gpus=2) == "cpu"
    assert resolve_device("cuda:1", gpus=2) == "cuda:1"


@pytest.mark.parametrize("spec", ["cuda", "cuda:0", "cuda:3"])
def test_cuda_without_a_gpu_is_one_line(spec):
    with pytest.raises(DeviceError) as info:
        resolve_device(spec, gpus=0)
    assert "no CUDA GPU is visible" in str(info.value) and "\n" not in str(info.value)


def test_bad_device_names():
    with pytest.raises(DeviceError, match="unknown device"):
        resolve_device("gpu", gpus=1)
    with pytest.raises(DeviceError, match="only 2 GPU"):
        resolve_device("cuda:2", gpus=2)


def test_each_worker_owns_one_gpu():
    assert worker_gpus("cuda", ["3", "5"]) == ["3", "5"]
    assert worker_gpus("cuda:1", ["3", "5"]) == ["5"]
    assert worker_gpus("cpu", ["3", "5"]) == []
    # the worker's trusted trainer computes on its own GPU, under this process's index of it
    assert trainer_device("cuda", "5", ["3", "5"]) == "cuda:1" and trainer_device("cpu", "5", ["3", "5"]) == "cpu"
    assert trainer_device("cuda:1", None, []) == "cuda:1"
    assert trusted_device("cuda") == "cuda:0" and trusted_device("cuda:1") == "cuda:1"


def test_local_pool_hands_out_visible_gpus_round_robin(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    pool = make_pool("local", 3, device="cuda")
    try:
        assert [box.gpu for box in pool.sandboxes] == ["3", "5", "3"]
        assert [box.env_extra["CUDA_VISIBLE_DEVICES"] for box in pool.sandboxes] == ["3", "5", "3"]
    finally:
        pool.close()
    cpu_pool = make_pool("local", 2, device="cpu")
    try:  # a CPU run hides every GPU from its jobs
        assert [box.env_extra["CUDA_VISIBLE_DEVICES"] for box in cpu_pool.sandboxes] == ["", ""]
    finally:
        cpu_pool.close()


def test_gpu_sandbox_gets_the_nvidia_devices_and_sysfs():
    args = bubblewrap_command(__import__("pathlib").Path("/tmp"), gpu=True)
    assert "/sys" in args
    assert "/sys" not in bubblewrap_command(__import__("pathlib").Path("/tmp"), gpu=False)


class RecordingSandbox(Sandbox):
    """Records the jobs it is given (no process is started)."""

    name = "recording"
    isolation_notes: list[str] = []

    def __init__(self):
        self.jobs: list[Job] = []
        self.inputs: list[dict] = []

    def run(self, job, inputs=None):  # noqa: ANN001, ANN201
        self.jobs.append(job)
        self.inputs.append(inputs or {})
        return Outcome(Status.CRASHED, "recorded only")


@pytest.mark.parametrize(("device", "expected"), [("cpu", "cpu"), ("cuda", "cuda:0"), ("cuda:1", "cuda:0")])
def test_the_device_reaches_the_job(device, expected):
    task = get_task("preference")
    evaluator = Evaluator(task, device=device)
    evaluator.trusted_device = "cpu"  # no GPU here to prepare inputs on; the job's device is what is checked
    box = RecordingSandbox()
    evaluator.evaluate(task.seed_program, box, "discover", configs=["clean"], seeds=[0])
    (job,) = box.jobs
    assert job.device == expected
    assert job.limits.training_seconds == task.training_seconds
    assert job.limits.wall_seconds == 60 + task.training_seconds  # overhead + one training


def _asserting_device(expected: str) -> str:
    """The reference loss, asserting that its inputs live on ``expected``."""
    check = f"    assert str(policy_chosen_logps.device) == {expected!r}, str(policy_chosen_logps.device)\n"
    source = get_task("preference").seed_program.replace("    h =", check + "    h =", 1)
    assert "assert str(policy_chosen_logps.device)" in source
    return source


def _evaluate_json(path, *args: str) -> dict:
    proc = subprocess.run([sys.executable, "-m", "discovery.cli", "evaluate", str(path), *args, "--seeds", "1",
                           "--json"], capture_output=True, text=True, timeout=600)
    return {"returncode": proc.returncode, **json.loads(proc.stdout)}


def test_a_real_job_sees_the_device_it_was_given(tmp_path):
    """Through the real sandbox on the CPU: the candidate's tensors live on the job's device (and the
    same check, asked to see a GPU, fails: the assertion is really evaluated)."""
    on_cpu, on_gpu = tmp_path / "cpu.py", tmp_path / "gpu.py"
    on_cpu.write_text(_asserting_device("cpu"))
    on_gpu.write_text(_asserting_device("cuda:0"))
    ok = _evaluate_json(on_cpu, "--device", "cpu")
    assert ok["returncode"] == 0 and ok["device"] == "cpu" and ok["status"] == "ok", ok
    wrong = _evaluate_json(on_gpu, "--device", "cpu")
    assert wrong["returncode"] == 1 and wrong["status"] == "error" and "AssertionError: cpu" in wrong["reason"]


def test_cli_refuses_cuda_without_a_gpu(tmp_path):
    if HAS_GPU:
        pytest.skip("this machine has a GPU")
    (tmp_path / "x.py").write_text(get_task("preference").seed_program)
    for args in (["run", "--device", "cuda", "--db", str(tmp_path / "r.db")],
                 ["evaluate", "x.py", "--device", "cuda:0"], ["baselines", "--device", "cuda"]):
        proc = subprocess.run([sys.executable, "-m", "discovery.cli", *args], capture_output=True, text=True,
                              timeout=120, cwd=tmp_path)
        assert proc.returncode == 2, (args, proc.stderr)
        assert proc.stderr.startswith("error:") and "no CUDA GPU" in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "r.db").exists()  # refused before anything was written


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_GPU, reason="needs a CUDA GPU")
@pytest.mark.parametrize("task", ["preference", "classification", "optimizer"])
def test_evaluate_trains_on_the_gpu_in_the_local_sandbox(tmp_path, task):
    t = get_task(task)
    path = tmp_path / "candidate.py"
    path.write_text(_asserting_device("cuda:0") if task == "preference" else t.seed_program)
    proc = subprocess.run([sys.executable, "-m", "discovery.cli", "evaluate", str(path), "--task", task,
                           "--device", "cuda", "--seeds", "1", "--json"], capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["device"] == "cuda" and report["status"] == "ok", report


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_GPU, reason="needs a CUDA GPU")
def test_run_on_the_gpu_records_the_device(tmp_path):
    db = tmp_path / "runs.db"
    proc = subprocess.run([sys.executable, "-m", "discovery.cli", "run", "--device", "cuda", "--budget", "2",
                           "--workers", "1", "--db", str(db), "--quiet"], capture_output=True, text=True,
                          timeout=900, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    from discovery.archive import Archive

    with Archive.open_readonly(str(db)) as archive:
        (run,) = archive.list_runs()
        assert run["config"]["device"] == "cuda"
