"""``discovery export``: real archive of a short run, real fresh interpreters, real sandbox for the round trip."""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from discovery.archive import Archive
from discovery.export import ExportError, export, program_for_function
from discovery.export.identifiers import is_safe_identifier
from discovery.export.module import clean_text
from discovery.export.rename import move_program
from discovery.tasks import get_task
from sandbox.base import Status
from sandbox.static.policy import Policy, check_source

HEAD = "import math\nimport torch\nimport torch.nn.functional as F\n\n"
SIG = "def loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):\n"
H = "    h = (policy_chosen_logps - reference_chosen_logps) - (policy_rejected_logps - reference_rejected_logps)\n"


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "discovery.cli", *args], capture_output=True, text=True, timeout=timeout, cwd=cwd
    )


def run_python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    """A fresh interpreter (``-c``), in ``cwd``."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=cwd)


# ------------------------------------------------------------------------------------- renaming (no archive)


def test_renaming_is_scope_aware_and_keeps_helpers_apart():
    source = HEAD + textwrap.dedent("""
        from math import log as ln
        scale = 0.7
        TAU = 0.5

        def _f(x, scale):
            return x * scale

        def _g(x):
            return [scale * v for scale in (1.0,) for v in [x]][0] + TAU

        def loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
            h = (policy_chosen_logps - reference_chosen_logps) - (policy_rejected_logps - reference_rejected_logps)
            TAU = 3.0
            inner = lambda scale: scale + TAU
            return -F.logsigmoid(beta * _f(h, scale)) + 0 * inner(1.0) + 0 * _g(h) * ln(2.0)
    """)
    moved = move_program(ast.parse(source), "loss", "mine", lambda old: f"_mine__{old}", "doc")
    text = ast.unparse(ast.Module(body=[*ast.parse(HEAD).body, *moved.imports, *moved.body], type_ignores=[]))
    assert moved.mapping == {
        "ln": "_mine__ln",
        "scale": "_mine__scale",
        "TAU": "_mine__TAU",
        "_f": "_mine___f",
        "_g": "_mine___g",
        "loss": "mine",
    }
    assert "def _mine___f(x, scale):\n    return x * scale" in text  # the parameter keeps its name
    assert "[scale * v for scale in (1.0,)" in text  # so does the comprehension variable
    assert "_mine___f(h, _mine__scale)" in text  # the global reference is renamed
    assert "TAU = 3.0" in text and "scale + TAU" in text  # locals of loss and of the lambda stay
    assert "+ _mine__TAU" in text and "from math import log as _mine__ln" in text
    assert (
        ast.get_docstring(next(s for s in moved.body if isinstance(s, ast.FunctionDef) and s.name == "mine")) == "doc"
    )
    namespace: dict = {}
    exec(compile(text, "<renamed>", "exec"), namespace)  # noqa: S102 - our own test program
    args = [torch.randn(6) for _ in range(4)]
    h = (args[0] - args[2]) - (args[1] - args[3])
    assert torch.allclose(namespace["mine"](*args, 0.1), -torch.nn.functional.logsigmoid(0.1 * h * 0.7))


def test_program_for_function_passes_the_policy_and_avoids_parameter_clashes():
    module = HEAD + textwrap.dedent("""
        import torch.nn as nn
        K = 2.0

        def _beta__helper(x):
            return x * K

        def beta(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
            h = (policy_chosen_logps - reference_chosen_logps) - (policy_rejected_logps - reference_rejected_logps)
            return -F.logsigmoid(beta * _beta__helper(h))

        def other(a, b, c, d, e):
            return nn.functional.relu(a)

        class NotAllowed:
            pass
    """)
    task = get_task("preference")
    program = program_for_function(module, "beta", task.slot.name, task.slot.signature)
    assert check_source(program, Policy(task.slot.allowed_imports, task.slot.name)) == []
    assert "class" not in program and "def other" not in program and "torch.nn as nn" not in program
    namespace: dict = {}
    exec(compile(program, "<program>", "exec"), namespace)  # noqa: S102
    args = [torch.randn(5) for _ in range(4)]
    h = (args[0] - args[2]) - (args[1] - args[3])
    assert torch.allclose(namespace["loss"](*args, 0.1), -torch.nn.functional.logsigmoid(0.1 * h * 2.0))
    with pytest.raises(ExportError, match="no top-level function 'absent'"):
        program_for_function(module, "absent", task.slot.name, task.slot.signature)
    with pytest.raises(ExportError, match="cannot parse"):
        program_for_function("def (", "x", task.slot.name, task.slot.signature)


# ------------------------------------------------------------------------------------- on a real short run

CHECK_MODULE = """
import ast, importlib.util, json, math, sys, torch
spec = importlib.util.spec_from_file_location("discovered_losses", sys.argv[1] if len(sys.argv) > 1 else "{path}")
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
assert not any(m == "discovery" or m.startswith(("discovery.", "sandbox")) for m in sys.modules), "imports discovery"
assert not any(m.split(".")[0] in ("trl", "transformers") for m in sys.modules), "imports trl at import"
assert "DiscoveredDPOTrainer" in dir(mod)  # built from the installed trl on first use (tests/.../test_trl.py)
g = torch.Generator().manual_seed(0)
out = {{}}
for name, fn in mod.REGISTRY.items():
    assert getattr(mod, name) is fn and fn.__name__ == name and fn.__doc__
    args = [(torch.randn(8, generator=g) * 3 - 10).requires_grad_(True) for _ in range(4)]
    losses = fn(*args, 0.1)
    assert losses.shape == (8,) and bool(torch.isfinite(losses).all()), name
    losses.mean().backward()
    assert args[0].grad is not None
    dpo_loss = mod.make_dpo_loss(name, beta=0.1)
    plain = [a.detach() for a in args]
    l2, cr, rr = dpo_loss(*plain, "extra", None)  # further arguments are ignored
    assert torch.equal(l2, fn(*plain, 0.1))
    assert torch.allclose(cr, 0.1 * (plain[0] - plain[2])) and torch.allclose(rr, 0.1 * (plain[1] - plain[3]))
    assert not cr.requires_grad
    module = mod.DiscoveredDPOLoss(fn, beta=0.1, reduction="mean")
    l4, _, _ = module(*plain)
    assert torch.allclose(l4, l2.mean())
    out[name] = {{"doc": fn.__doc__, "meta": mod.METADATA[name]}}
try:
    mod.make_dpo_loss("no such loss")
except KeyError as exc:
    assert "no such loss" in str(exc)
else:
    raise AssertionError("unknown name accepted")
print(json.dumps(out))
"""


def _check_in_fresh_interpreter(path: Path, cwd: Path) -> dict:
    proc = run_python(CHECK_MODULE.format(path=str(path)), cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def _module_shape_is_plain(text: str) -> None:
    """Independently of the exporter's own check: only imports of torch/math, function
    definitions, the two literal dicts and the adapter at the top level."""
    tree = ast.parse(text)
    assert isinstance(tree.body[0], ast.Expr) and isinstance(tree.body[0].value, ast.Constant)
    for stmt in tree.body[1:]:
        if isinstance(stmt, (ast.Import, ast.ImportFrom)):
            modules = [a.name for a in stmt.names] if isinstance(stmt, ast.Import) else [stmt.module]
            assert all(m.split(".")[0] in ("torch", "math") for m in modules), ast.unparse(stmt)
        elif isinstance(stmt, ast.Assign):
            target = stmt.targets[0]
            assert (
                isinstance(target, ast.Name)
                and target.id in ("REGISTRY", "METADATA")
                or isinstance(stmt.value, (ast.Constant, ast.UnaryOp, ast.BinOp, ast.Tuple))
            ), ast.unparse(stmt)
            if target.id == "METADATA":
                ast.literal_eval(stmt.value)
        else:
            assert isinstance(stmt, ast.FunctionDef) or (
                isinstance(stmt, ast.ClassDef) and stmt.name == "DiscoveredDPOLoss"
            ), ast.dump(stmt)


def _reevaluate(program: str, configs: list[str], seeds: list[int]) -> dict[tuple[str, int], float]:
    """Fitness per (configuration, seed) of ``program`` through the Evaluator and the sandbox, as
    ``discovery evaluate`` does, one job per configuration (as the run splits its jobs)."""
    from discovery.evaluation import Evaluator
    from discovery.sandboxes import make_pool

    evaluator = Evaluator(get_task("preference"))
    out: dict[tuple[str, int], float] = {}
    with make_pool("local", 1) as pool:
        for config in configs:
            report = pool.submit(
                lambda box, c=config: evaluator.evaluate(
                    program, box, "discover", n_seeds=len(seeds), configs=[c], seeds=seeds
                )
            ).result()
            assert report.ok, report.one_line()
            out.update({(m.config, m.seed): m.fitness for c in report.configs for m in c.seeds})
    return out


@pytest.mark.timeout(1200)  # makes the short run if no test did yet, then 40 trainings in the sandbox
def test_exported_module_imports_alone_and_reproduces_archived_fitness(short_run_db, tmp_path):
    from discovery.evaluation import aggregate
    from discovery.tasks import SeedMetrics

    db = short_run_db("preference", 6)
    task = get_task("preference")
    with Archive.open_readonly(db) as archive:
        rows = [c for c in archive.leaderboard(limit=100) if not c.is_baseline]
        # a leader that got extra seeds, and the best candidate scored on the suite's own seeds
        extra = max(rows, key=lambda c: (c.n_seeds, c.fitness))
        plain = next(c for c in rows if c.n_seeds == len(task.suite("discover").seeds))
        stored = {
            c.id: {(e.config, e.seed): e.fitness for e in archive.evaluations(c.id, "discover")} for c in (extra, plain)
        }
    assert extra.n_seeds > plain.n_seeds
    best = [extra, plain]  # exported in the order named
    out = tmp_path / "discovered_losses.py"
    proc = run_cli("export", "--db", str(db), "--candidate", extra.id, "--candidate", plain.id, "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    text = out.read_text()
    _module_shape_is_plain(text)
    checked = _check_in_fresh_interpreter(out, tmp_path)
    assert [m["meta"]["candidate"] for m in checked.values()] == [c.id for c in best]
    for name, row in zip(checked, best, strict=True):
        meta = checked[name]["meta"]
        assert meta["fitness"] == row.fitness and meta["name"] == row.name
        assert f"{row.fitness:.4f}" in checked[name]["doc"] and row.run_id in checked[name]["doc"]
        seeds = sorted({s for _, s in stored[row.id]})
        assert meta["seeds"] == seeds and len(seeds) == row.n_seeds
        assert seeds == list(task.suite("discover").with_seeds(len(seeds)).seeds)  # what --seeds N gives
        # every archived (configuration, seed), extra seeds included, from the exported function alone
        program = program_for_function(text, name, task.slot.name, task.slot.signature)
        redone = _reevaluate(program, [c.name for c in task.suite("discover").configs], seeds)
        assert redone.keys() == stored[row.id].keys()
        for key, value in stored[row.id].items():
            assert abs(redone[key] - value) < 1e-6, (name, key, redone[key], value)
        fitness, _ = aggregate(
            task.suite("discover").with_seeds(len(seeds)),
            [SeedMetrics(config=c, seed=s, fitness=f) for (c, s), f in redone.items()],
        )
        assert abs(fitness.mean - row.fitness) < 1e-6
        assert abs(fitness.low - row.fitness_ci_low) < 1e-6 and abs(fitness.high - row.fitness_ci_high) < 1e-6
    # and through the command line: `discovery evaluate FILE --function NAME` (first seed, every configuration)
    name, row = next(iter(checked)), best[0]
    again = run_cli("evaluate", str(out), "--function", name, "--seeds", "1", "--json")
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr
    report = json.loads(again.stdout)
    assert report["function"] == name and report["status"] == "ok"
    redone = {(c["config"], s["seed"]): s["fitness"] for c in report["configs"] for s in c["per_seed"]}
    first = {key: value for key, value in stored[row.id].items() if key[1] == 0}
    assert redone.keys() == first.keys()
    assert all(abs(redone[key] - value) < 1e-6 for key, value in first.items()), (redone, first)


def test_json_format_carries_the_same_content(short_run_db, tmp_path):
    db = short_run_db("preference", 6)
    py, js = tmp_path / "m.py", tmp_path / "m.json"
    assert run_cli("export", "--db", str(db), "--top", "3", "--out", str(py)).returncode == 0
    proc = run_cli("export", "--db", str(db), "--top", "3", "--out", str(js), "--format", "json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(js.read_text())
    assert data["format"] == "discovery-export" and data["task"] == "preference"
    namespace: dict = {}
    exec(compile(py.read_text(), str(py), "exec"), namespace)  # noqa: S102 - the module just exported
    assert [f["function"] for f in data["functions"]] == list(namespace["REGISTRY"])
    task = get_task("preference")
    for entry in data["functions"]:
        assert entry["fitness"] == namespace["METADATA"][entry["function"]]["fitness"]
        assert check_source(entry["code"], Policy(task.slot.allowed_imports, "loss")) == []
        ns: dict = {}
        exec(compile(entry["source"], "<source>", "exec"), ns)  # noqa: S102
        args = [torch.randn(4) for _ in range(4)]
        assert torch.equal(ns[entry["function"]](*args, 0.1), namespace[entry["function"]](*args, 0.1))


HOSTILE_THOUGHT = 'ends the docstring """\nimport os; os.system("touch PWNED")\n"""\\'
HOSTILE = [
    ('x"); import os; os.system("touch PWNED") #', HOSTILE_THOUGHT, 0.5),
    ("class", "'''\x00\x1b[31m''' \\\"\"\"", 0.7),
    ("", "", 1.0),
    ("λλλ 损失", "unicode \u2028 line separator", 1.3),
    ("dpo", "one dpo", 1.6),
    ("dpo", "another dpo", 2.0),
    ("REGISTRY", '\r\n"""; import os', 2.5),
    ("print", "", 3.0),
]


def _hostile_archive(db: Path, tmp_path: Path) -> tuple[Path, str, list[str]]:
    """A copy of the short run's archive with hostile candidates (status ok, best fitness) added."""
    copy = tmp_path / "hostile.db"
    shutil.copy(db, copy)
    ids = []
    with Archive(copy) as archive:
        run_id = archive.list_runs()[0]["id"]
        for i, (name, thought, scale) in enumerate(HOSTILE):
            code = (
                HEAD
                + f"TAU = {scale!r}\n\n\ndef _gate(x):\n    return torch.sigmoid(x / TAU)\n\n\n"
                + SIG
                + H
                + "    return -F.logsigmoid(beta * h) * (1 + _gate(h)) * TAU\n"
            )
            added = archive.add_candidate(
                run_id,
                name=name,
                code=code,
                code_hash=f"hostile-{i}",
                proposer="test",
                thought=thought,
                parents=["c-missing"],
            )
            archive.update_candidate(
                added.id, status="ok", fitness=10.0 + i, fitness_ci_low=9.0 + i, fitness_ci_high=11.0 + i, n_seeds=3
            )
            ids.append(added.id)
        bad = archive.add_candidate(
            run_id,
            name="bad",
            code=HEAD + SIG + "    import os\n    return os\n",
            code_hash="hostile-bad",
            proposer="test",
        )
        archive.update_candidate(bad.id, status="ok", fitness=99.0)
    return copy, bad.id, ids


def test_hostile_names_and_thoughts_cannot_inject_code(short_run_db, tmp_path):
    db, bad_id, ids = _hostile_archive(short_run_db("preference", 6), tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    out = work / "discovered_losses.py"
    proc = run_cli("export", "--db", str(db), "--top", "20", "--out", str(out), cwd=work)
    assert proc.returncode == 0, proc.stderr
    assert f"skipped {bad_id}" in proc.stderr  # the tampered one fails the static policy: left out, said so
    text = out.read_text()
    _module_shape_is_plain(text)
    checked = _check_in_fresh_interpreter(out, work)
    assert not list(tmp_path.rglob("PWNED")) and not Path("PWNED").exists()
    names = list(checked)
    assert len(names) == len(set(names)) and all(is_safe_identifier(n) for n in names)
    by_id = {m["meta"]["candidate"]: (n, m) for n, m in checked.items()}
    ns: dict = {}
    exec(compile(text, str(out), "exec"), ns)  # noqa: S102 - checked above in a fresh interpreter
    assert bad_id not in by_id and set(ids) <= set(by_id)
    for cid, (name, thought, scale) in zip(ids, HOSTILE, strict=True):
        export_name, entry = by_id[cid]
        assert entry["meta"]["name"] == clean_text(name) and entry["meta"]["thought"] == clean_text(thought)
        if thought.strip():  # the thought is in the docstring, as text
            assert " ".join(clean_text(thought).split())[:25] in " ".join(entry["doc"].split())
        assert "PWNED" not in export_name and export_name not in ("class", "print", "REGISTRY")
        # each candidate keeps its own TAU and _gate although all of them define both
        args = [torch.randn(6) for _ in range(4)]
        h = (args[0] - args[2]) - (args[1] - args[3])
        expected = -torch.nn.functional.logsigmoid(0.1 * h) * (1 + torch.sigmoid(h / scale)) * scale
        assert torch.allclose(ns[export_name](*args, 0.1), expected)
    assert not list(tmp_path.rglob("PWNED"))
    # naming the tampered candidate explicitly is an error, not a silent skip
    proc = run_cli("export", "--db", str(db), "--candidate", bad_id, "--out", str(work / "x.py"))
    assert proc.returncode == 2 and "does not pass the static policy" in proc.stderr
    assert not (work / "x.py").exists()


def test_export_of_named_candidates_including_a_baseline(short_run_db, tmp_path):
    db = short_run_db("preference", 6)
    with Archive.open_readonly(db) as archive:
        rows = archive.leaderboard(limit=100)
    baseline = next(c for c in rows if c.is_baseline)
    other = next(c for c in rows if not c.is_baseline)
    out = tmp_path / "two.py"
    proc = run_cli("export", "--db", str(db), "-c", baseline.id, "-c", other.id, "-c", baseline.id, "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    checked = _check_in_fresh_interpreter(out, tmp_path)
    assert [m["meta"]["candidate"] for m in checked.values()] == [baseline.id, other.id]
    assert "(a baseline)" in next(iter(checked.values()))["doc"]


def test_bad_input_gives_one_line_and_nonzero_exit(short_run_db, tmp_path):
    db = short_run_db("preference", 6)
    empty = tmp_path / "empty.db"
    Archive(empty).close()
    cases = {
        "missing db": (["--db", str(tmp_path / "absent.db")], "no archive at"),
        "empty archive": (["--db", str(empty)], "has no runs"),
        "unknown run": (["--db", str(db), "--run", "r-nope"], "no run r-nope"),
        "unknown candidate": (["--db", str(db), "--candidate", "c-nope"], "no candidate c-nope"),
        "both": (["--db", str(db), "--top", "2", "--candidate", "c-x"], "either --top or --candidate"),
        "zero top": (["--db", str(db), "--top", "0"], "at least 1"),
        "format": (["--db", str(db), "--format", "xml"], "unknown format"),
        "not a db": (["--db", __file__], "not a"),
    }
    for case, (args, fragment) in cases.items():
        out = tmp_path / f"{case.replace(' ', '_')}.py"
        proc = run_cli("export", *args, "--out", str(out))
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        assert proc.returncode == 2, (case, proc.stderr)
        assert len(lines) == 1 and lines[0].startswith("error:") and fragment in lines[0], (case, proc.stderr)
        assert "Traceback" not in proc.stdout + proc.stderr and not out.exists(), case
    exported = tmp_path / "ok.py"
    assert run_cli("export", "--db", str(db), "--top", "1", "--out", str(exported)).returncode == 0
    proc = run_cli("evaluate", str(exported), "--function", "absent")
    assert proc.returncode == 2 and proc.stderr.startswith("error:") and "no top-level function 'absent'" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    proc = run_cli("evaluate", str(exported))  # an exported module without --function: say how to pick one
    assert proc.returncode == 2 and "choose one of its functions with --function NAME" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_candidates_of_two_tasks_are_not_mixed(short_run_db, tmp_path):
    copy = tmp_path / "two_tasks.db"
    shutil.copy(short_run_db("preference", 6), copy)
    with Archive(copy) as archive:
        first = archive.list_runs()[0]["id"]
        mine = archive.candidates(first, status=Status.OK)[0].id
        other_run = archive.create_run("other_task", {"task": "other_task"})
        added = archive.add_candidate(
            other_run, name="x", code="def update(p):\n    return p\n", code_hash="o", proposer="test"
        )
        archive.update_candidate(added.id, status="ok", fitness=50.0)
    with pytest.raises(ExportError, match="several tasks"):
        export(copy, top=3)
    with pytest.raises(ExportError, match="several tasks"):
        export(copy, candidate_ids=[mine, added.id])
    text, chosen, _ = export(copy, top=3, task="preference")
    assert chosen and all(c.task == "preference" for _, c in chosen)
    _, only_other, _ = export(copy, run_id=first, top=1)
    assert only_other[0][1].run_id == first


# ------------------------------------------------------------------------------------- any status, when named

STATUSES = {  # name -> (status, fitness, failed stage, reason, extra line of code)
    "kept": ("ok", 0.5, None, None, ""),
    "culled_one": (
        "culled",
        0.2,
        "cascade",
        "cascade fitness 0.200 < best 0.500 - margin 0.05; full suite not run",
        "    h = h * 1.5\n",
    ),
    "crashed_one": ("error", None, "train", "RuntimeError: NaN loss at step 3", "    h = h * 2.5\n"),
    "bad_contract": ("invalid", None, "contract", "loss returns shape (1,), expected (10,)", "    h = h * 3.5\n"),
    "raised_one": (
        "error",
        None,
        "contract",
        "NameError: name 'hx' is not defined (line 8: `h = h * 4.5`)",
        "    h = h * 4.5\n",
    ),
}
#: the structured error the jail reported, for the candidates that raised
ERRORS = {"raised_one": {"error_class": "NameError", "error_line": 8, "error_message": "name 'hx' is not defined"}}


def _status_archive(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A run with a candidate per status (ok, culled with a partial fitness, failed without one),
    one without code and one the static policy rejects; their ids by name."""
    db = tmp_path / "statuses.db"
    ids = {}
    with Archive(db) as archive:
        run = archive.create_run("preference", {"task": "preference"})
        for name, (status, fitness, stage, reason, extra) in STATUSES.items():
            code = HEAD + SIG + H + extra + "    return -F.logsigmoid(beta * h)\n"
            ids[name] = archive.add_candidate(run, name=name, code=code, code_hash=name, proposer="test").id
            archive.update_candidate(
                ids[name], status=status, fitness=fitness, failed_stage=stage, reason=reason, **ERRORS.get(name, {})
            )
        ids["no_code"] = archive.add_candidate(run, name="no_code", code="", code_hash="none", proposer="test").id
        archive.update_candidate(ids["no_code"], status="parse", reason="empty response")
        ids["sneaky"] = archive.add_candidate(
            run, name="sneaky", code=HEAD + SIG + "    import os\n    return os\n", code_hash="sneaky", proposer="test"
        ).id
        archive.update_candidate(ids["sneaky"], status="policy", reason="import of os")
    return db, ids


def test_a_named_candidate_exports_whatever_its_status(tmp_path):
    db, ids = _status_archive(tmp_path)
    names = ["culled_one", "crashed_one", "bad_contract", "raised_one", "kept"]
    text, chosen, skipped = export(db, candidate_ids=[ids[n] for n in names])
    assert [name for name, _ in chosen] == names and not skipped
    ns: dict = {}
    exec(compile(text, "exported.py", "exec"), ns)  # noqa: S102 - the module just exported
    args = [torch.randn(6) for _ in range(4)]
    h = (args[0] - args[2]) - (args[1] - args[3])
    for name, scale in (
        ("culled_one", 1.5),
        ("crashed_one", 2.5),
        ("bad_contract", 3.5),
        ("raised_one", 4.5),
        ("kept", 1.0),
    ):
        assert torch.allclose(ns[name](*args, 0.1), -torch.nn.functional.logsigmoid(0.1 * h * scale))
        status, fitness, stage, reason, _ = STATUSES[name]
        doc = " ".join(ns[name].__doc__.split())
        meta = ns["METADATA"][name]
        assert meta["status"] == status and meta["fitness"] == fitness
        assert "Reproduce:" not in doc  # no suite-level score to reproduce here
        if status == "ok":
            assert "Status: ok" in doc and meta["reason"] == ""
            continue
        assert meta["reason"] == f"{stage}: {reason}"
        assert f"Status: {status} ({stage}: {reason}). Not a fully evaluated candidate: " in doc
        assert ("partial scores" if fitness is not None else "no fitness") in doc
    data = json.loads(export(db, candidate_ids=[ids["crashed_one"]], fmt="json")[0])
    assert data["functions"][0]["status"] == "error" and "NaN loss" in data["functions"][0]["reason"]
    # --top still takes only evaluated (ok) candidates
    _, top, _ = export(db, top=10)
    assert [c.id for _, c in top] == [ids["kept"]]


def test_named_candidates_on_the_command_line(tmp_path):
    db, ids = _status_archive(tmp_path)
    out = tmp_path / "culled.py"
    proc = run_cli("export", "--db", str(db), "--candidate", ids["culled_one"], "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "Status: culled (cascade: cascade fitness 0.200" in " ".join(out.read_text().split())
    failed = tmp_path / "failed.py"  # no fitness at all: the summary line says so
    proc = run_cli("export", "--db", str(db), "--candidate", ids["crashed_one"], "--out", str(failed))
    assert proc.returncode == 0, proc.stderr
    assert "status error, no fitness" in proc.stderr and "Status: error (train:" in failed.read_text()
    for name, fragment in (("no_code", "has no code (status parse)"), ("sneaky", "does not pass the static policy")):
        proc = run_cli("export", "--db", str(db), "--candidate", ids[name], "--out", str(tmp_path / "x.py"))
        assert proc.returncode == 2 and fragment in proc.stderr, proc.stderr
        assert not (tmp_path / "x.py").exists()
