"""The task version: a hash of the task's code and settings, stable until one of them changes."""

from __future__ import annotations

import copy
import shutil
import subprocess
import sys
import zipfile
from dataclasses import replace
from pathlib import Path

from discovery.tasks import Suite, get_task
from discovery.tasks.version import device_kind, task_version

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = ROOT / "examples" / "regression_task.py"


def test_stable_across_calls_and_equal_for_an_equal_task():
    task = get_task("classification")
    version = task_version(task)
    assert version == task_version(task) and len(version) == 16
    assert task_version(copy.copy(task)) == version  # computed afresh for another object: the same
    versions = {task_version(get_task(name)) for name in ("classification", "preference", "optimizer")}
    assert len(versions) == 3


def test_changes_when_a_suite_setting_changes():
    task = get_task("classification")
    version = task_version(task)
    first = task.discover.configs[0]
    key = next(iter(first.params))
    changed = copy.copy(task)
    params = {**first.params, key: f"{first.params[key]}-changed"}
    configs = (replace(first, params=params), *task.discover.configs[1:])
    changed.discover = Suite("discover", configs, task.discover.seeds)
    assert task_version(changed) != version
    reseeded = copy.copy(task)
    reseeded.discover = Suite("discover", task.discover.configs, (*task.discover.seeds, 99))
    assert task_version(reseeded) not in (version, task_version(changed))
    slower = copy.copy(task)
    slower.training_seconds = task.training_seconds + 1
    assert task_version(slower) != version


def _copy(tmp_path: Path, folder: str, edit=None) -> Path:
    target = tmp_path / folder / EXAMPLE.name
    target.parent.mkdir()
    text = EXAMPLE.read_text()
    target.write_text(edit(text) if edit else text)
    return target


def test_a_task_file_changes_the_version_when_its_code_changes_not_its_comments(tmp_path):
    original = task_version(get_task(str(_copy(tmp_path, "same"))))
    assert original == task_version(get_task(str(EXAMPLE)))  # its content counts, not where it lies
    assert "STEPS, LR = 300, 0.05" in EXAMPLE.read_text()
    fewer_steps = get_task(str(_copy(tmp_path, "steps", lambda t: t.replace("STEPS, LR = 300", "STEPS, LR = 200"))))
    assert task_version(fewer_steps) != original
    documented = _copy(
        tmp_path,
        "docs",
        lambda t: t.replace('"""A user\'s own task', '"""A user\'s own, re-documented task').replace(
            "STEPS, LR = 300, 0.05", "STEPS, LR = 300, 0.05  # a comment"
        ),
    )
    assert documented.read_text() != EXAMPLE.read_text()
    assert task_version(get_task(str(documented))) == original


def test_a_change_of_the_shared_trainer_code_changes_every_version(tmp_path):
    """From a zip of the packages (as an installed, zipped or wheel-like copy is read: no checkout on
    disk), the version is the same as here; with one line of the shared training code changed, it is not."""

    def version_from(copy_root: Path) -> str:
        archive = tmp_path / f"{copy_root.name}.zip"
        with zipfile.ZipFile(archive, "w") as zf:
            for package in ("discovery", "sandbox"):
                for path in sorted((copy_root / package).rglob("*.py")):
                    zf.write(path, path.relative_to(copy_root).as_posix())
        code = (
            "import discovery, sys; from discovery.tasks import get_task; "
            "from discovery.tasks.version import task_version; "
            f"assert discovery.__file__.startswith({str(archive)!r}), discovery.__file__; "
            "print(task_version(get_task('classification')))"
        )
        proc = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=tmp_path,
            env={"PYTHONPATH": str(archive), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        return proc.stdout.strip()

    same = tmp_path / "same"
    for package in ("discovery", "sandbox"):
        shutil.copytree(ROOT / package, same / package, ignore=shutil.ignore_patterns("__pycache__"))
    assert version_from(same) == task_version(get_task("classification"))
    changed = tmp_path / "changed"
    shutil.copytree(same, changed)
    wire = changed / "sandbox" / "wire.py"
    wire.write_text(wire.read_text() + "\nEXTRA_CONSTANT = 1\n")
    assert version_from(changed) != task_version(get_task("classification"))


def test_device_kind():
    assert [device_kind(d) for d in ("cpu", "cuda", "cuda:1")] == ["cpu", "cuda", "cuda"]
