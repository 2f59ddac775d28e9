"""The ``discovery`` command line."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

if TYPE_CHECKING:  # imported lazily at run time: the CLI starts fast
    from discovery.evaluation import EvaluationReport

app = typer.Typer(
    no_args_is_help=True, pretty_exceptions_enable=False, help="LLM-driven discovery of losses and optimizers."
)
console = Console()
err = Console(stderr=True)

#: exit codes: done, the run or evaluation failed, usage or configuration, stopped by Ctrl-C
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

TaskOpt = Annotated[str, typer.Option("--task", "-t", help="Built-in task name or path to a task file.")]
SuiteOpt = Annotated[str, typer.Option("--suite", help="discover | heldout")]
SeedsOpt = Annotated[int | None, typer.Option("--seeds", help="Seeds per configuration (default: the suite's).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object instead of tables.")]
SandboxOpt = Annotated[str, typer.Option("--sandbox", help="local | docker")]
WorkersOpt = Annotated[int, typer.Option("--workers", "-w", help="Evaluations in parallel.")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Show tracebacks and logs.")]
ImageOpt = Annotated[str | None, typer.Option("--docker-image", help="Image for --sandbox docker.")]
DeviceOpt = Annotated[
    str | None,
    typer.Option(
        "--device",
        help="auto | cpu | cuda | cuda:N (auto: CUDA when a GPU "
        "is visible). With cuda and --workers N each worker owns one GPU.",
    ),
]
TrainingSecondsOpt = Annotated[
    float | None,
    typer.Option(
        "--training-seconds",
        min=0.001,
        help="Wall-clock limit of one (configuration, seed) training (default: the "
        "task's, 60 s for the built-in tasks).",
    ),
]


def _version(value: bool) -> None:
    if value:
        from discovery import __version__

        console.print(f"discovery {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """LLM-driven discovery of losses and optimizers."""


def _device(spec: str | None) -> str:
    from discovery.devices import DeviceError, resolve_device

    try:
        return resolve_device(spec or "auto")
    except DeviceError as exc:
        fail(str(exc))
    raise AssertionError  # fail() exits


#: the held-out secret of `evaluate` and `baselines` outside a run (a run uses its archive's own)
HELDOUT_SECRET_VARIABLE = "DISCOVERY_HELDOUT_SECRET"


def _evaluator(task, device: str, training_seconds: float | None):  # noqa: ANN001, ANN202
    from discovery.evaluation import Evaluator
    from sandbox.base import Limits

    return Evaluator(
        task,
        device=device,
        limits=Limits(training_seconds=training_seconds or 0.0),
        heldout_secret=os.environ.get(HELDOUT_SECRET_VARIABLE, ""),
    )


def fail(message: str, code: int = 2) -> NoReturn:
    """Print a one-line error and exit."""
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _fitness_mean(report: EvaluationReport) -> float:
    """The mean fitness of a scored report; -inf for one that failed."""
    return report.fitness.mean if report.ok and report.fitness is not None else float("-inf")


def _load_task(ref: str):  # noqa: ANN202
    from discovery.tasks import TaskNotFound, get_task

    try:
        return get_task(ref)
    except TaskNotFound as exc:
        fail(str(exc))
    except Exception as exc:  # a broken user task file
        fail(f"cannot load task {ref}: {type(exc).__name__}: {exc}")


def _pool(kind: str, workers: int, image: str | None, device: str = "cpu"):  # noqa: ANN202
    from discovery.sandboxes import SandboxUnavailable, make_pool

    try:
        return make_pool(kind, workers, image, device)
    except (SandboxUnavailable, RuntimeError) as exc:
        fail(str(exc))


def _exported_names(source: str) -> list[str]:
    """The keys of a module's top-level ``REGISTRY = {...}`` (a ``discovery export`` module), else []."""
    import ast

    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return []
    for stmt in tree.body:
        if (
            isinstance(stmt, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == "REGISTRY" for t in stmt.targets)
            and isinstance(stmt.value, ast.Dict)
        ):
            return [k.value for k in stmt.value.keys if isinstance(k, ast.Constant) and isinstance(k.value, str)]
    return []


def _fmt(est) -> str:  # noqa: ANN001
    if est is None:
        return "-"
    if est.n < 2:
        return f"{est.mean:.3f}"
    return f"{est.mean:.3f} ± {est.half_width:.3f}"


def print_report(report, title: str) -> None:  # noqa: ANN001
    """The per-configuration table of one evaluation."""
    table = Table(title=title, title_justify="left")
    table.add_column("configuration")
    table.add_column("fitness (95% CI)", justify="right")
    metric_names = sorted({k for c in report.configs for k in c.metrics})
    for name in metric_names:
        table.add_column(name, justify="right")
    table.add_column("seeds", justify="right")
    table.add_column("time (s)", justify="right")
    for c in report.configs:
        table.add_row(
            c.name,
            _fmt(c.fitness),
            *[_fmt(c.metrics.get(m)) for m in metric_names],
            str(c.fitness.n),
            f"{c.seconds:.2f}",
        )
    console.print(table)
    console.print(
        f"overall fitness: [bold]{_fmt(report.fitness)}[/] (mean over configurations; 95% CI over "
        f"{report.fitness.n if report.fitness else 0} seeds) in {report.seconds:.1f} s"
    )


@app.command()
def tasks(
    task: Annotated[
        str | None,
        typer.Option(
            "--task",
            "-t",
            help="Show one task (a name or a task file's path) in full: slot, contract, fitness, suites, baselines.",
        ),
    ] = None,
) -> None:
    """List the built-in tasks and their slots, or show one task in full."""
    from discovery.tasks import task_names

    for name in [task] if task else task_names():
        loaded = _load_task(name)
        console.print(f"[bold]{escape(loaded.name)}[/]: {escape(loaded.description)}", highlight=False)
        console.print(f"  slot: {escape(loaded.slot.signature)}", highlight=False)
        console.print(
            "  suites: "
            + ", ".join(f"{s.name} ({len(s.configs)} configs x {len(s.seeds)} seeds)" for s in loaded.suites().values())
        )
        if task:
            console.print(f"  baselines: {', '.join(loaded.baselines)}", highlight=False)
            console.print(f"\ncontract:\n{escape(loaded.slot.contract)}", highlight=False)
            if loaded.fitness_doc:
                console.print(f"\nfitness:\n{escape(loaded.fitness_doc)}", highlight=False)


@app.command()
def evaluate(
    path: Annotated[Path, typer.Argument(help="Python file defining the slot function.")],
    task: TaskOpt = "preference",
    suite: SuiteOpt = "discover",
    seeds: SeedsOpt = None,
    as_json: JsonOpt = False,
    sandbox: SandboxOpt = "local",
    docker_image: ImageOpt = None,
    verbose: VerboseOpt = False,
    function: Annotated[
        str | None,
        typer.Option(
            "--function", help="Evaluate this function of the file as the slot (e.g. one of an exported module)."
        ),
    ] = None,
    device: DeviceOpt = None,
    training_seconds: TrainingSecondsOpt = None,
) -> None:
    """Check a candidate, run it on a suite in the sandbox, print its scores."""
    try:
        source = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        fail(f"cannot read {path}: {exc}")
    t = _load_task(task)
    exported = _exported_names(source) if function is None else []
    if exported:
        fail(
            f"{path} is an exported module: choose one of its functions with --function NAME "
            f"({', '.join(exported[:8])})"
        )
    if function is not None:
        from discovery.export import ExportError, program_for_function

        try:
            source = program_for_function(source, function, t.slot.name, t.slot.signature)
        except ExportError as exc:
            fail(f"{path}: {exc}")
    if suite not in t.suites():
        fail(f"task {t.name!r} has no suite {suite!r} (have: {', '.join(t.suites())})")
    resolved = _device(device)
    evaluator = _evaluator(t, resolved, training_seconds)
    with _pool(sandbox, 1, docker_image, resolved) as pool:
        report = pool.submit(lambda box: evaluator.evaluate(source, box, suite, seeds)).result()
        notes = pool.isolation_notes
    if as_json:
        data = report.to_dict()
        data["candidate"] = str(path)
        data["function"] = function
        data["sandbox"] = {"backend": sandbox, "isolation": notes}
        data["device"] = resolved
        print(json.dumps(data))
    elif report.ok:
        print_report(report, f"{path}{':' + function if function else ''} on {t.name}/{suite}")
    if not report.ok:
        if not as_json:
            err.print(
                f"[bold red]{report.stage} stage failed[/] ({report.status.value}): {escape(report.reason)}",
                highlight=False,
                soft_wrap=True,
                markup=True,
            )
        if verbose and report.log_tail:
            err.print(report.log_tail, highlight=False, markup=False)
        raise typer.Exit(1)


@app.command()
def baselines(
    task: TaskOpt = "preference",
    suite: Annotated[str, typer.Option("--suite", help="discover | heldout | both")] = "discover",
    seeds: SeedsOpt = None,
    as_json: JsonOpt = False,
    sandbox: SandboxOpt = "local",
    docker_image: ImageOpt = None,
    workers: WorkersOpt = 1,
    only: Annotated[str | None, typer.Option("--only", help="Comma-separated baseline names.")] = None,
    device: DeviceOpt = None,
    training_seconds: TrainingSecondsOpt = None,
) -> None:
    """Evaluate the task's whole baseline library and print a ranked leaderboard."""
    from discovery.stats import spearman

    t = _load_task(task)
    suites = ["discover", "heldout"] if suite == "both" else [suite]
    for s in suites:
        if s not in t.suites():
            fail(f"task {t.name!r} has no suite {s!r}")
    library = t.baselines
    if only:
        wanted = [n.strip() for n in only.split(",") if n.strip()]
        unknown = [n for n in wanted if n not in library]
        if unknown:
            fail(f"unknown baseline(s): {', '.join(unknown)} (have: {', '.join(library)})")
        library = {n: library[n] for n in wanted}
    resolved = _device(device)
    evaluator = _evaluator(t, resolved, training_seconds)
    started = time.monotonic()
    results: dict[str, dict[str, EvaluationReport]] = {s: {} for s in suites}
    with _pool(sandbox, workers, docker_image, resolved) as pool:
        futures = {
            (s, name): pool.submit(lambda box, src=src, s=s: evaluator.evaluate(src, box, s, seeds))
            for s in suites
            for name, src in library.items()
        }
        for (s, name), fut in futures.items():
            results[s][name] = fut.result()
    elapsed = time.monotonic() - started
    out: dict[str, Any] = {"task": t.name, "seconds": elapsed, "device": resolved, "suites": {}}
    for s in suites:
        ranked = sorted(results[s].items(), key=lambda kv: _fitness_mean(kv[1]), reverse=True)
        out["suites"][s] = [{"name": n, **r.to_dict()} for n, r in ranked]
        if not as_json:
            table = Table(title=f"{t.name} baselines on {s}", title_justify="left")
            for col in ("rank", "baseline", "fitness (95% CI)"):
                table.add_column(col, justify="right" if col != "baseline" else "left")
            config_names = [c.name for c in t.suite(s).configs]
            for c in config_names:
                table.add_column(c, justify="right")
            for i, (name, rep) in enumerate(ranked, 1):
                per = {c.name: c.fitness for c in rep.configs}
                table.add_row(
                    str(i),
                    name,
                    _fmt(rep.fitness) if rep.ok else rep.one_line()[:40],
                    *[_fmt(per.get(c)) for c in config_names],
                )
            console.print(table)
    if len(suites) == 2:
        names = [n for n in library if results["discover"][n].ok and results["heldout"][n].ok]
        rho = spearman(
            [_fitness_mean(results["discover"][n]) for n in names],
            [_fitness_mean(results["heldout"][n]) for n in names],
        )
        out["spearman_discover_heldout"] = None if rho != rho else rho
        if not as_json and rho == rho:
            console.print(
                f"Spearman rank correlation, discover vs held-out: [bold]{rho:.3f}[/] over {len(names)} baselines"
            )
        elif not as_json:
            console.print(
                f"Spearman rank correlation: not computed ({len(names)} baselines scored on both suites; "
                "a rank correlation needs at least 3)"
            )
    if as_json:
        print(json.dumps(out))
    else:
        console.print(f"{len(library) * len(suites)} evaluations in {elapsed:.1f} s with {workers} worker(s)")


@app.command()
def run(
    task: Annotated[str | None, typer.Option("--task", "-t", help="Built-in task name or task file.")] = None,
    model: Annotated[
        list[str] | None,
        typer.Option("--model", "-m", help="LLM (litellm name), optionally name@weight; repeat for several."),
    ] = None,
    api_base: Annotated[str | None, typer.Option("--api-base", help="OpenAI-compatible server URL.")] = None,
    budget: Annotated[int | None, typer.Option("--budget", help="Candidates to propose.")] = None,
    max_cost: Annotated[float | None, typer.Option("--max-cost", help="USD limit, counting calls in flight.")] = None,
    workers: Annotated[int | None, typer.Option("--workers", "-w", help="Evaluations in parallel.")] = None,
    db: Annotated[str | None, typer.Option("--db", help="SQLite archive.")] = None,
    seed: Annotated[int | None, typer.Option("--seed")] = None,
    config: Annotated[Path | None, typer.Option("--config", help="TOML file with any of these options.")] = None,
    proposer: Annotated[str | None, typer.Option("--proposer", help="auto | llm | mutation | random")] = None,
    sandbox: Annotated[str | None, typer.Option("--sandbox", help="local | docker")] = None,
    docker_image: ImageOpt = None,
    device: DeviceOpt = None,
    training_seconds: TrainingSecondsOpt = None,
    job_seconds: Annotated[
        float | None,
        typer.Option(
            "--job-seconds",
            min=1,
            help="Wall-clock limit of one whole sandboxed job (default: 60 s + training seconds per training).",
        ),
    ] = None,
    memory_mb: Annotated[
        int | None, typer.Option("--memory-mb", min=256, help="Memory limit of a CPU job, MB (default 6144).")
    ] = None,
    resume: Annotated[str | None, typer.Option("--resume", help="Continue the run with this id.")] = None,
    reuse: Annotated[
        bool | None,
        typer.Option(
            "--reuse/--no-reuse",
            help="Copy stored results of identical code (same task version, suite, configuration, seed, "
            "device kind) from the archive instead of training again (default); --no-reuse trains afresh.",
        ),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No live progress.")] = False,
) -> None:
    """Run the discovery loop (offline mutation proposer unless a --model is given).

    Exit codes: 0 finished, 1 failed, 2 usage or configuration error, 130 stopped by Ctrl-C."""
    from discovery.agent.loop import DiscoveryRun
    from discovery.archive import ArchiveError
    from discovery.config import ConfigError, load_config, parse_model

    try:
        models = [parse_model(m, api_base).model_dump() for m in model] if model else None
        limits = {"training_seconds": training_seconds, "job_seconds": job_seconds, "memory_mb": memory_mb}
        overrides = {
            "task": task,
            "models": models,
            "budget": budget,
            "max_cost": max_cost,
            "workers": workers,
            "db": db,
            "seed": seed,
            "proposer": proposer,
            "sandbox": sandbox,
            "docker_image": docker_image,
            "device": device,
            "limits": {k: v for k, v in limits.items() if v is not None} or None,
            "reuse": reuse,
        }
        cfg = load_config(config, overrides)
        if api_base and not model:
            cfg = cfg.model_copy(update={"models": [m.model_copy(update={"api_base": api_base}) for m in cfg.models]})
        from discovery.tasks import TaskNotFound

        try:
            explicit = {k for k, v in overrides.items() if v is not None}
            runner = DiscoveryRun(cfg, resume=resume, on_progress=None, explicit=explicit)
        except TaskNotFound as exc:
            fail(str(exc))
    except (ConfigError, ArchiveError) as exc:
        fail(str(exc))
    except Exception as exc:  # e.g. the sandbox cannot start: one line, not a traceback
        fail(f"{type(exc).__name__}: {exc}")
    console.print(
        f"run [bold]{runner.run_id}[/] on task {runner.task.name}: budget {runner.config.budget}, "
        f"{runner.config.workers} worker(s), device {runner.config.device}, proposer "
        f"{type(runner.proposer).__name__}, archive {runner.config.db}",
        highlight=False,
    )
    for note in runner.pool.isolation_notes:
        console.print(f"  sandbox: {note}", highlight=False)

    def stopping(running: int) -> None:  # from the SIGINT handler: answer at once
        err.print(f"stopping: {running} evaluation(s) still running; Ctrl-C again to abort", highlight=False)

    runner.on_stop_requested = stopping
    result = _run_with_progress(runner, quiet)
    resume_hint = f"discovery run --resume {result.run_id} --db {result.db}"
    if runner.aborted:
        # running jobs were killed; pipeline threads may still be unwinding: leave now (the archive
        # is consistent, as after a SIGKILL), without waiting for them
        err.print(f"run {result.run_id} aborted; resume: {resume_hint}", highlight=False, soft_wrap=True)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(EXIT_INTERRUPTED)
    _print_leaderboard(result.db, run_id=result.run_id, task_name=None, limit=10)
    console.print(
        f"run {result.run_id} {result.status}{': ' + result.message if result.message else ''}", highlight=False
    )
    console.print(
        f"archive: {Path(result.db).resolve()}  (discovery leaderboard --db {result.db}; "
        f"discovery show CANDIDATE --db {result.db}; resume: {resume_hint})",
        highlight=False,
        soft_wrap=True,
    )
    if result.status == "failed":
        raise typer.Exit(EXIT_FAILED)
    if result.status == "stopped":
        raise typer.Exit(EXIT_INTERRUPTED)


def _run_with_progress(runner, quiet: bool):  # noqa: ANN001, ANN202
    from rich.live import Live

    from sandbox.base import Status

    def line(p) -> str:  # noqa: ANN001
        best = f"{p.best:.4f} ({p.best_name})" if p.best is not None else "-"
        fails = ", ".join(f"{k} {v}" for k, v in sorted(p.statuses.items()) if k != Status.OK) or "none"
        return (
            f"[{p.phase}] {p.finished}/{p.budget} done, {p.proposed} proposed | best {best} | "
            f"{p.rate_per_minute:.1f}/min | not ok: {fails} | cost ${p.cost:.4f}"
        )

    if quiet or not console.is_terminal:
        last = [0.0]

        def report(p) -> None:  # noqa: ANN001
            if time.monotonic() - last[0] > 10:
                last[0] = time.monotonic()
                console.print(line(p), highlight=False, soft_wrap=True)

        runner.on_progress = report
        return runner.execute()
    with Live(console=console, refresh_per_second=2, transient=False) as live:
        runner.on_progress = lambda p: live.update(line(p))
        return runner.execute()


def _print_leaderboard(db: str, run_id: str | None, task_name: str | None, limit: int) -> None:
    from discovery.archive import Archive

    with Archive.open_readonly(db) as archive:
        rows = archive.leaderboard(run_id=run_id, task=task_name, limit=limit)
    table = Table(title="leaderboard" + (f" of run {run_id}" if run_id else ""), title_justify="left")
    for col in ("rank", "candidate", "name", "fitness (95% CI)", "seeds", "held-out (95% CI)", "run"):
        table.add_column(col)
    for i, c in enumerate(rows, 1):
        fit = _ci(c.fitness, c.fitness_ci_low, c.fitness_ci_high)
        held = _ci(c.heldout_fitness, c.heldout_ci_low, c.heldout_ci_high)
        name = c.name + (" (baseline)" if c.is_baseline else "")
        table.add_row(str(i), c.id, escape(name[:40]), fit, str(c.n_seeds or "-"), held, c.run_id)
    console.print(table)


def _ci(mean, low, high) -> str:  # noqa: ANN001
    if mean is None:
        return "-"
    if low is None or high is None or low == high:
        return f"{mean:.4f}"
    return f"{mean:.4f} ± {(high - low) / 2:.4f}"


@app.command()
def leaderboard(
    db: Annotated[str, typer.Option("--db", help="SQLite archive.")] = "runs.db",
    run_id: Annotated[str | None, typer.Option("--run", help="Only this run.")] = None,
    task: Annotated[str | None, typer.Option("--task", "-t", help="Only this task.")] = None,
    limit: Annotated[int, typer.Option("--limit", "-n")] = 20,
) -> None:
    """Print the best candidates the archive knows (fitness with CI, held-out)."""
    from discovery.archive import ArchiveError

    try:
        _print_leaderboard(db, run_id, task, limit)
    except ArchiveError as exc:
        fail(str(exc))


@app.command()
def show(
    candidate: Annotated[str, typer.Argument(help="Candidate id.")],
    db: Annotated[str, typer.Option("--db", help="SQLite archive.")] = "runs.db",
) -> None:
    """Everything the archive knows about one candidate: scores, lineage, feedback, code."""
    from rich.syntax import Syntax

    from discovery import describe
    from discovery.archive import Archive, ArchiveError

    try:
        with Archive.open_readonly(db) as archive:
            c = archive.get_candidate(candidate)
            if c is None:
                fail(f"no candidate {candidate} in {db}")
            lineage = archive.lineage(candidate)
            run_row = archive.get_run(c.run_id) or {}
            evaluations = archive.evaluations(candidate)
    except ArchiveError as exc:
        fail(str(exc))
    run_config = run_row.get("config") or {}
    console.print(
        f"[bold]{escape(c.name)}[/] ({c.id}), run {c.run_id}, generation {c.generation}, island "
        f"{c.island}, proposer {escape(c.proposer)}",
        highlight=False,
    )
    console.print(
        f"trained on: {run_config.get('device', 'cpu')} ({run_config.get('sandbox', 'local')} sandbox)", highlight=False
    )
    console.print(f"status: {escape(describe.outcome_line(c))}", highlight=False, soft_wrap=True)
    if describe.extra_reason(c):
        console.print(f"reason: {escape(describe.extra_reason(c))}", highlight=False, soft_wrap=True)
    if c.duplicate_of:
        console.print(
            f"duplicate of: {c.duplicate_of} (discovery show {c.duplicate_of} --db {db})",
            highlight=False,
            soft_wrap=True,
        )
    fitness = _ci(c.fitness, c.fitness_ci_low, c.fitness_ci_high)
    console.print(
        f"fitness (discover): {fitness} over {c.n_seeds or 0} seeds; held-out: "
        f"{_ci(c.heldout_fitness, c.heldout_ci_low, c.heldout_ci_high)}",
        highlight=False,
    )
    paths = Counter(e.trainer_path for e in evaluations if e.trainer_path)
    if paths:
        console.print(
            "trainer: " + ", ".join(f"{path} ({n})" for path, n in paths.most_common()), highlight=False, soft_wrap=True
        )
    reused = [e.reused_from for e in evaluations if e.reused_from is not None]
    if reused:
        sources = ", ".join(str(i) for i in reused[:8]) + (", ..." if len(reused) > 8 else "")
        console.print(
            f"evaluations: {len(evaluations) - len(reused)} trained, {len(reused)} reused "
            f"(copied from the identical trainings {sources})",
            highlight=False,
            soft_wrap=True,
        )
    if c.per_config:
        _print_per_config(c.per_config)
    if len(lineage) > 1:
        console.print(
            "lineage: " + " <- ".join(f"{escape(a.candidate.name)} ({a.candidate.id})" for a in lineage),
            highlight=False,
        )
    if c.thought:
        console.print(f"thought: {escape(c.thought)}", highlight=False)
    if c.code:
        console.print(Syntax(c.code, "python", line_numbers=True))
    if c.feedback_shown:
        console.rule("feedback the proposer was shown")
        console.print(c.feedback_shown, markup=False, highlight=False)


def _print_per_config(per_config: dict[str, dict]) -> None:
    """The table of a candidate's discover scores per configuration, with the task's own metrics."""
    table = Table(title="per configuration (discover)", title_justify="left")
    found = list(dict.fromkeys(k for v in per_config.values() for k in v.get("metrics", {})))
    shown = [k for k in ("win_rate", "kl", "pref_accuracy") if k in found] or found[:8]  # the task's own metrics
    for col in ("configuration", "fitness (95% CI)", "n", *shown):
        table.add_column(col)
    for name, v in per_config.items():
        m = v.get("metrics", {})
        table.add_row(
            name,
            _ci(v["fitness"], v.get("ci_low"), v.get("ci_high")),
            str(v.get("n")),
            *[f"{m[k]:.3f}" if k in m else "-" for k in shown],
        )
    console.print(table)


@app.command("export")
def export_cmd(
    out: Annotated[Path, typer.Option("--out", "-o", help="File to write (- for standard output).")],
    db: Annotated[str, typer.Option("--db", help="SQLite archive.")] = "runs.db",
    run_id: Annotated[str | None, typer.Option("--run", help="Only candidates of this run.")] = None,
    top: Annotated[int | None, typer.Option("--top", "-k", help="The K best evaluated candidates (default 5).")] = None,
    candidate: Annotated[
        list[str] | None,
        typer.Option("--candidate", "-c", help="Export this candidate (repeat for several); a baseline may be named."),
    ] = None,
    task: Annotated[str | None, typer.Option("--task", "-t", help="Only candidates of this task.")] = None,
    fmt: Annotated[str, typer.Option("--format", "-f", help="py (a module needing only torch) | json")] = "py",
) -> None:
    """Write discovered functions as a plain Python module (or JSON): docstrings with scores, REGISTRY, adapters."""
    from discovery.export import ExportError, export

    if str(out) != "-" and out.resolve() == Path(db).resolve():
        fail(f"--out {out} is the archive itself")
    try:
        text, chosen, skipped = export(db, run_id=run_id, top=top, candidate_ids=candidate or (), fmt=fmt, task=task)
    except ExportError as exc:
        fail(str(exc))
    for line in skipped:
        err.print(f"skipped {line}", highlight=False, markup=False, soft_wrap=True)
    if str(out) == "-":
        sys.stdout.write(text)
        return
    try:
        out.write_text(text, encoding="utf-8")
    except OSError as exc:
        fail(f"cannot write {out}: {exc.strerror or exc}")
    err.print(
        f"wrote {len(chosen)} function(s) to {out} ({fmt}): "
        + ", ".join(
            f"{name} ({c.id}, "
            + (f"fitness {c.fitness:.4f})" if c.fitness is not None else f"status {c.status}, no fitness)")
            for name, c in chosen
        ),
        highlight=False,
        markup=False,
        soft_wrap=True,
    )


def dashboard_command(db: str, host: str, port: int) -> list[str]:
    """The ``streamlit run`` command line that serves the dashboard over ``db``."""
    from discovery.dashboard import entry_script

    return [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(entry_script()),
        "--server.address",
        host,
        "--server.port",
        str(port),
        "--server.headless",
        "true",
        "--browser.gatherUsageStats",
        "false",
        "--server.fileWatcherType",
        "none",
        "--",
        "--db",
        str(Path(db).expanduser().resolve()),
    ]


@app.command()
def dashboard(
    db: Annotated[str, typer.Option("--db", help="SQLite archive (read-only; need not exist yet).")] = "runs.db",
    host: Annotated[str, typer.Option("--host", help="Address to bind; 0.0.0.0 exposes it to the network.")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="Port to serve on.")] = 8501,
) -> None:
    """Serve the leaderboard dashboard (Streamlit) over an archive, read-only."""
    import subprocess

    if not Path(db).expanduser().is_file():
        err.print(f"note: no archive at {escape(db)} yet; the page says how to start a run", highlight=False)
    console.print(f"dashboard on http://{host}:{port} over {escape(db)} (Ctrl-C to stop)", highlight=False)
    try:
        proc = subprocess.Popen(dashboard_command(db, host, port))
    except OSError as exc:
        fail(f"cannot start streamlit: {exc}")
    # a SIGTERM (a service manager, `kill`) must stop streamlit too, not orphan it on the port
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: proc.send_signal(signum))
    try:
        code = proc.wait()
    except (KeyboardInterrupt, Interrupted):  # streamlit got the same SIGINT: let it stop cleanly
        try:
            code = proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
    finally:
        signal.signal(signal.SIGTERM, previous)
    code = 0 if code in (0, -2, -15, 130) else code
    raise typer.Exit(code)


class Interrupted(BaseException):
    """Ctrl-C outside a run (which handles SIGINT itself). Not a KeyboardInterrupt, which click
    would turn into "Aborted!" and exit code 1."""


def _interrupted(signum: int, frame: object) -> None:
    raise Interrupted


def main() -> None:
    """The ``discovery`` command: unexpected errors become one line and exit 1 (with
    ``DISCOVERY_DEBUG=1`` the traceback too); Ctrl-C exits 130; usage errors exit 2."""
    signal.signal(signal.SIGINT, _interrupted)
    try:
        app()
    except Interrupted:
        err.print("interrupted")
        sys.exit(EXIT_INTERRUPTED)
    except Exception as exc:  # noqa: BLE001 - a bug: one line, never a silent exit 0
        if os.environ.get("DISCOVERY_DEBUG") == "1":
            import traceback

            traceback.print_exc()
        err.print(
            f"[bold red]internal error:[/] {escape(f'{type(exc).__name__}: {exc}')}"
            " (DISCOVERY_DEBUG=1 shows the traceback)",
            highlight=False,
            soft_wrap=True,
        )
        sys.exit(EXIT_FAILED)


if __name__ == "__main__":
    main()
