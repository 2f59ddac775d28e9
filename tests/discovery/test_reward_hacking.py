"""A candidate's score can only come from honest training with its function.

Each cheat below is DPO plus an attempt, made from inside the jail with every wall above the
OS switched off (no static policy, no run-time guard), to reach what decides the score: the
policy's parameters (through the autograd graph of its arguments), the trainer's optimizer
(through the frames of its caller), the environment (by rebuilding it from the project's
code, the configuration and the seed), or the result (by planting a result file). None of
them is there to reach: the jail gets copies of the slot's arguments and nothing else. Each
cheat therefore scores exactly what plain DPO scores, bit for bit, or fails with a reason.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from discovery.evaluation import Evaluator
from discovery.tasks import get_task
from sandbox.host.local import LocalSandbox, bubblewrap_problem

TASK = get_task("preference")

HEADER = "import torch\nimport torch.nn.functional as F\n"
SIGNATURE = (
    "def loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):\n"
)
DPO = """\
    logits = (policy_chosen_logps - policy_rejected_logps) - (reference_chosen_logps - reference_rejected_logps)
    return -F.logsigmoid(beta * logits)
"""

#: walks the autograd graph of its arguments to the parameters behind them and zeroes them
WALK_THE_GRAPH = (
    HEADER
    + SIGNATURE
    + """\
    stack, seen = [policy_chosen_logps.grad_fn], 0
    while stack:
        node = stack.pop()
        if node is None:
            continue
        variable = getattr(node, "variable", None)
        if variable is not None:
            with torch.no_grad():
                variable.zero_()
            seen += 1
        stack.extend(n for n, _ in node.next_functions)
"""
    + DPO
)

#: climbs its caller's frames looking for an optimizer and a model to freeze or overwrite
WALK_THE_FRAMES = (
    "import sys\n"
    + HEADER
    + SIGNATURE
    + """\
    frame = sys._getframe(1)
    while frame is not None:
        for value in list(frame.f_locals.values()):
            for group in getattr(value, "param_groups", []):
                group["lr"] = 0.0
            if hasattr(value, "parameters") and callable(value.parameters):
                with torch.no_grad():
                    for p in value.parameters():
                        p.zero_()
        frame = frame.f_back
"""
    + DPO
)

#: rebuilds the hidden gold reward from the project's code and the job's configuration and seed
REBUILD_THE_ENVIRONMENT = (
    "import json, os\n"
    + HEADER
    + """
try:
    from discovery.tasks.preference import env as ENV
except ImportError:
    ENV = None
try:
    JOB = json.load(open("job.json"))
except (OSError, ValueError):
    JOB = {}


"""
    + SIGNATURE
    + """\
    for key in ("configs", "seeds", "suite", "task"):
        if key in JOB:
            raise RuntimeError(f"the jail was told the {key}: {JOB[key]}")
    if ENV is not None:
        raise RuntimeError("the environment's code is importable in the jail")
"""
    + DPO
)

#: plants forged weights as the result file, then trains honestly
PLANT_A_RESULT = (
    "import os\n"
    + HEADER
    + SIGNATURE
    + """\
    forged = {"status": "ok", "reason": "", "outputs": {"clean/0": {"policy": {}}}}
    torch.save(forged, "result.pt")
    with open(os.path.join(os.getcwd(), "result.pt.tmp"), "wb") as fh:
        fh.write(b"forged")
"""
    + DPO
)

#: keeps a reference to its arguments from the contract check and the previous step, to move them later
KEEP_THE_ARGUMENTS = (
    HEADER
    + """
KEPT = []


"""
    + SIGNATURE
    + """\
    for old in KEPT:
        with torch.no_grad():
            old.add_(1000.0)
    KEPT.append(policy_chosen_logps)
"""
    + DPO
)

CHEATS = {
    "walk_the_graph": WALK_THE_GRAPH,
    "walk_the_frames": WALK_THE_FRAMES,
    "rebuild_the_environment": REBUILD_THE_ENVIRONMENT,
    "plant_a_result": PLANT_A_RESULT,
    "keep_the_arguments": KEEP_THE_ARGUMENTS,
}

needs_bwrap = pytest.mark.skipif(bool(bubblewrap_problem()), reason=f"no bubblewrap: {bubblewrap_problem()}")


class Unguarded(Evaluator):
    """The static policy and the run-time guard off: only the jail stands between cheat and trainer."""

    def static_check(self, source: str):  # noqa: ANN201
        return None

    def run(self, job, sandbox, inputs=None, suite=None):  # noqa: ANN001, ANN201
        from dataclasses import replace

        return super().run(replace(job, guarded=False), sandbox, inputs, suite)


@pytest.fixture(scope="module", params=["local", "docker"])
def scores(request: pytest.FixtureRequest) -> dict[str, object]:
    """Each cheat's report, on both backends (Docker through the shared test image)."""
    if request.param == "local":
        if bubblewrap_problem():
            pytest.skip(f"no bubblewrap: {bubblewrap_problem()}")
        box = LocalSandbox()
    else:
        from sandbox.host.docker_backend import DockerSandbox

        box = DockerSandbox(image=request.getfixturevalue("docker_image"))
    evaluator = Unguarded(TASK)
    try:
        return {
            name: evaluator.evaluate(source, box, configs=["clean"], seeds=[0])
            for name, source in {"dpo": TASK.seed_program, **CHEATS}.items()
        }
    finally:
        box.close()


@pytest.mark.parametrize("name", sorted(CHEATS))
def test_a_cheat_scores_exactly_like_its_honest_part(name: str, scores: dict[str, object]):
    honest, cheat = scores["dpo"], scores[name]
    assert honest.ok, honest.one_line()
    assert cheat.ok, (cheat.one_line(), cheat.log_tail)
    assert cheat.fitness.mean == honest.fitness.mean  # bit for bit: nothing the cheat did reached training
    assert cheat.configs[0].seeds[0].metrics == honest.configs[0].seeds[0].metrics


def test_the_cheats_do_run_their_attempts(scores: dict[str, object]):
    """Guard against a vacuous pass: the same attempts, in this process, do reach their targets."""
    import torch

    namespace: dict = {}
    exec(WALK_THE_GRAPH, namespace)  # noqa: S102 - test-owned source, run on purpose in-process
    weight = torch.nn.Parameter(torch.ones(3))
    logps = weight * 2.0
    namespace["loss"](logps, logps.detach(), logps.detach(), logps.detach(), 0.1)
    assert torch.equal(weight.detach(), torch.zeros(3))  # in-process, the graph walk reached the weights


def test_through_the_policy_the_cheats_are_refused_before_they_run():
    evaluator = Evaluator(TASK)
    for name, source in CHEATS.items():
        report = evaluator.static_check(source)
        if name == "walk_the_graph":
            assert report is not None and "grad_fn" in report.reason + str(report.line), (name, report)
        elif report is None:  # what the allow-list lets through must still score honestly (above)
            continue
        assert report.status.value in ("policy", "parse"), (name, report.one_line())


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "discovery.cli", *args], capture_output=True, text=True, timeout=600)


@needs_bwrap
def test_through_the_cli_each_cheat_is_refused_with_its_line_or_scores_like_dpo(tmp_path: Path):
    """As a user meets them (``discovery evaluate``, every wall on): refused by the policy with a
    one-line reason naming the line, or, where the allow-list lets the attempt through, scored
    exactly like plain DPO."""
    honest = tmp_path / "dpo.py"
    honest.write_text(TASK.seed_program)
    dpo = _cli("evaluate", str(honest), "--task", "preference", "--json", "--seeds", "1")
    assert dpo.returncode == 0, dpo.stderr
    expected = json.loads(dpo.stdout)["fitness"]
    for name, source in CHEATS.items():
        path = tmp_path / f"{name}.py"
        path.write_text(source)
        proc = _cli("evaluate", str(path), "--task", "preference", "--json", "--seeds", "1")
        report = json.loads(proc.stdout)
        if proc.returncode == 0:
            # its own arithmetic may round differently (it keeps tensors alive and writes to them, which
            # moved one loss value by one float32 ulp at one step here), so not bit for bit: but no
            # more than rounding, where a reached trainer moves fitness by whole units
            assert report["fitness"]["mean"] == pytest.approx(expected["mean"], abs=1e-6), name
            continue
        assert proc.returncode == 1 and report["status"] == "policy", (name, report)
        assert isinstance(report["line"], int) and report["reason"].startswith(f"line {report['line']}:"), report
        assert "\n" not in report["reason"]
    assert name and Evaluator(TASK).static_check(KEEP_THE_ARGUMENTS) is None  # at least one reached training
