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
from sandbox.base import Job, Outcome, Status
from sandbox.host.local import LocalSandbox, bubblewrap_command

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
        assert [box.gpu for box in pool.sandboxes] == ["3", "5", "3"]  # each worker's trainer owns one GPU
    finally:
        pool.close()
    with LocalSandbox(gpu="5") as box:  # what each worker's sandbox is: its jails see no GPU at all
        assert box.gpu == "5" and box.env_extra["CUDA_VISIBLE_DEVICES"] == ""
    cpu_pool = make_pool("local", 2, device="cpu")
    try:  # a CPU run gives no worker a GPU
        assert [box.gpu for box in cpu_pool.sandboxes] == [None, None]
    finally:
        cpu_pool.close()


def test_a_jail_never_gets_a_gpu():
    """The trusted trainer computes on the worker's GPU; the jail holds CPU copies of the slot's
    arguments only, so it gets neither the NVIDIA device nodes nor /sys."""
    args = " ".join(bubblewrap_command(__import__("pathlib").Path("/tmp")))
    assert "/dev/nvidia" not in args and " /sys " not in args


@pytest.mark.parametrize(
    ("device", "gpu", "expected"),
    [
        ("cpu", None, "cpu"),
        ("cuda", None, "cuda:0"),
        ("cuda:1", None, "cuda:1"),
        ("cuda", "5", "cuda:1"),
    ],
)
def test_the_device_reaches_the_trainer(monkeypatch, device, gpu, expected):
    """The job carries the run's device; the trainer computes on its worker's GPU, under this
    process's index of it (CUDA_VISIBLE_DEVICES=3,5: GPU 5 is cuda:1 here)."""
    import discovery.evaluation as evaluation

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    seen: list[tuple[Job, str]] = []

    def recording_run_job(box, job, inputs, task, device, suite=None):  # noqa: ANN001, ANN202
        seen.append((job, device))
        return Outcome(Status.CRASHED, "recorded only")

    monkeypatch.setattr(evaluation, "run_job", recording_run_job)
    task = get_task("preference")
    evaluator = Evaluator(task, device=device)
    evaluator.trusted_device = "cpu"  # no GPU here to prepare inputs on
    box = type("Box", (), {"gpu": gpu})()
    evaluator.evaluate(task.seed_program, box, "discover", configs=["clean"], seeds=[0])
    ((job, trainer),) = seen
    assert job.device == device and trainer == expected
    assert job.limits.training_seconds == task.training_seconds
    assert job.limits.wall_seconds == 60 + task.training_seconds  # overhead + one training


def _asserting_device(expected: str) -> str:
    """The reference loss, asserting that its inputs live on ``expected``."""
    check = f"    assert str(policy_chosen_logps.device) == {expected!r}, str(policy_chosen_logps.device)\n"
    source = get_task("preference").seed_program.replace("    h =", check + "    h =", 1)
    assert "assert str(policy_chosen_logps.device)" in source
    return source


def _evaluate_json(path, *args: str) -> dict:
    proc = subprocess.run(
        [sys.executable, "-m", "discovery.cli", "evaluate", str(path), *args, "--seeds", "1", "--json"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    return {"returncode": proc.returncode, **json.loads(proc.stdout)}


def test_a_real_job_sees_the_device_it_was_given(tmp_path):
    """Through the real sandbox: the candidate's tensors are CPU copies in its jail (and the same
    check, asked to see a GPU, fails: the assertion is really evaluated)."""
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
    for args in (
        ["run", "--device", "cuda", "--db", str(tmp_path / "r.db")],
        ["evaluate", "x.py", "--device", "cuda:0"],
        ["baselines", "--device", "cuda"],
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "discovery.cli", *args], capture_output=True, text=True, timeout=120, cwd=tmp_path
        )
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
    # the trainer is on the GPU; the jail computes the loss on CPU copies of its arguments
    path.write_text(_asserting_device("cpu") if task == "preference" else t.seed_program)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "discovery.cli",
            "evaluate",
            str(path),
            "--task",
            task,
            "--device",
            "cuda",
            "--seeds",
            "1",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["device"] == "cuda" and report["status"] == "ok", report


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_GPU, reason="needs a CUDA GPU")
def test_run_on_the_gpu_records_the_device(tmp_path):
    db = tmp_path / "runs.db"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "discovery.cli",
            "run",
            "--device",
            "cuda",
            "--budget",
            "2",
            "--workers",
            "1",
            "--db",
            str(db),
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    from discovery.archive import Archive

    with Archive.open_readonly(str(db)) as archive:
        (run,) = archive.list_runs()
        assert run["config"]["device"] == "cuda"
