"""Render a :class:`ProposalContext` into the chat messages an LLM proposer sends.

The prompts live in Jinja2 templates under ``prompts/`` at the repository root, shipped in
the wheel as the package ``discovery.prompting.templates`` and read through :mod:`importlib.resources`
(``system.j2``: the task, the slot, the fitness definition, the rules and the answer format;
``propose.j2``: a bounded view of the archive and the parent's OPTO-style trace). This module
only prepares plain values for them and keeps the result bounded:

* top-k (default 8) of the parent's island, sorted ascending by fitness so the best is LAST
  (as OPRO), a few diverse members (3), recent failures as one-line digests (5);
* each code listing capped (60 lines / 2,000 characters; the parent's 80 / 4,000);
* a total budget (24,000 characters): over it, the weakest listings are dropped first, then
  diverse members and failures, then code listings are shortened.

Only named fields of a candidate are read, so nothing held out (``heldout_*``) can reach a prompt.
What a candidate or an LLM chose (names, thoughts, reasons, the parser's complaint about the last
reply) reaches the templates only through :mod:`discovery.untrusted`: bounded, cleaned, and
quoted as data (code listings get a fence longer than any backtick run inside them).
"""

from __future__ import annotations

import functools
import importlib.resources
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import jinja2

from discovery.prompting import feedback
from discovery.records import Candidate
from discovery.selection import ProposalContext
from discovery.untrusted import fence_for, name_untrusted, one_line_untrusted

__all__ = [
    "PROMPTS_DIR",
    "PromptLimits",
    "messages_text",
    "missing_templates",
    "render_feedback_text",
    "render_messages",
]

TEMPLATES_PACKAGE = "discovery.prompting.templates"


def _prompts_dir() -> Path:
    """The templates' directory: the ``discovery.prompting.templates`` package (the checkout's
    top-level ``prompts/``, mapped there by pyproject.toml, or its copy inside an installed wheel)."""
    try:
        return Path(str(importlib.resources.files(TEMPLATES_PACKAGE)))
    except ModuleNotFoundError:  # a checkout on sys.path without an install
        return Path(__file__).resolve().parents[2] / "prompts"


PROMPTS_DIR = _prompts_dir()
SYSTEM_TEMPLATE = "system.j2"
PROPOSE_TEMPLATE = "propose.j2"


def missing_templates() -> list[str]:
    """The prompt templates this installation lacks (a broken install), by file name."""
    return [name for name in (SYSTEM_TEMPLATE, PROPOSE_TEMPLATE) if not (PROMPTS_DIR / name).is_file()]


@dataclass(frozen=True)
class PromptLimits:
    """How much of the archive one prompt may show."""

    top_k: int = 8
    diverse: int = 3
    failures: int = 5
    code_lines: int = 60  # per listing of top / diverse / reference
    code_chars: int = 2000
    parent_code_lines: int = 80  # the parent's (and second parent's) trace
    parent_code_chars: int = 4000
    max_chars: int = 24000  # system + user message, in characters


DEFAULT_LIMITS = PromptLimits()
#: the reason the previous reply could not be used, at most (it may quote the reply)
ERROR_FEEDBACK_CHARS = 600


@functools.lru_cache(maxsize=4)
def _environment(directory: str) -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(directory),
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # plain-text prompts, not HTML
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=False,
    )


def _render(template: str, **values: Any) -> str:
    text = _environment(str(PROMPTS_DIR)).get_template(template).render(**values)
    text = re.sub(r"[ \t]+\n", "\n", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"


# --------------------------------------------------------------------------------------------
# values for the templates


def _fitness_key(c: Candidate) -> float:
    value = c.fitness
    return value if value is not None and math.isfinite(value) else -math.inf


def _name(c: Candidate) -> str:
    return name_untrusted(c.name or c.id or "unnamed", 60)


def _item(c: Candidate, limits: PromptLimits, shown_below: dict[str, str]) -> dict[str, str]:
    see = shown_below.get(c.id)
    code = "" if see else feedback.clip_code(c.code, limits.code_lines, limits.code_chars)
    return {
        "name": _name(c),
        "fitness": feedback.fitness_text(c),
        "configs": feedback.config_summary(c),
        "code": code,
        "fence": fence_for(code),
        "see": see or "",
    }


def _unique(candidates: Iterable[Candidate] | None, exclude: set[str]) -> list[Candidate]:
    """The candidates with code, each once (by id), less those in ``exclude``."""
    out, seen = [], set(exclude)
    for c in candidates or ():
        if not c.code:
            continue
        key = c.id or c.code_hash or c.code
        if key in seen:
            continue
        seen.add(key)
        out.append(c)
    return out


def _failure_lines(candidates: Iterable[Candidate] | None, limit: int) -> list[str]:
    """One digest per recent failure, newest last; repeats of the same digest are counted once."""
    if limit <= 0:
        return []
    counts: dict[str, int] = {}
    for c in candidates or ():
        line = feedback.failure_digest(c)
        counts[line] = counts.pop(line, 0) + 1  # re-insert: the order follows the newest repeat
    lines = [line if n == 1 else f"{line} (x{n})" for line, n in counts.items()]
    return lines[-limit:]


def _values(ctx: ProposalContext, error_feedback: str | None, limits: PromptLimits) -> tuple[dict, dict]:
    task = ctx.task
    slot = task.slot.name
    parent, second, reference = ctx.parent, ctx.second_parent, ctx.reference
    if parent is not None and second is not None and parent.id == second.id:
        second = None  # the same candidate twice: show it once
    shown_below: dict[str, str] = {}
    if parent is not None:
        shown_below[parent.id] = "as the program to improve"
    if second is not None:
        shown_below.setdefault(second.id, "as the second parent")

    top = sorted(_unique(ctx.top, set()), key=_fitness_key)[-limits.top_k :] if limits.top_k > 0 else []
    top_ids = {c.id for c in top}
    diverse = _unique(ctx.diverse, top_ids)[: limits.diverse] if limits.diverse > 0 else []
    failures = _failure_lines(ctx.failures, limits.failures)

    ref_item = None
    if reference is not None:
        listed = {c.id for c in [*top, *diverse]}
        ref_item = _item(reference, limits, {})
        if reference.id in listed or reference.id in shown_below:
            ref_item["code"] = ""  # already shown elsewhere

    parent_trace = second_trace = ""
    if parent is not None:
        parent_trace = feedback.candidate_trace(
            parent,
            None,
            reference,
            slot_name=slot,
            max_code_lines=limits.parent_code_lines,
            max_code_chars=limits.parent_code_chars,
        )
    if second is not None:
        second_trace = feedback.candidate_trace(
            second,
            None,
            reference,
            slot_name=slot,
            curves=False,
            max_code_lines=limits.parent_code_lines,
            max_code_chars=limits.parent_code_chars,
        )
    seed_code = (
        ""
        if parent is not None
        else feedback.clip_code(task.seed_program, limits.parent_code_lines, limits.parent_code_chars)
    )
    system = {
        "task_name": task.name,
        "description": task.description,
        "slot": slot,
        "slot_description": task.describe_slot(),
        "fitness_doc": task.fitness_doc or "Higher is better.",
        "allowed_imports": list(task.slot.allowed_imports),
    }
    user = {
        "slot": slot,
        "reference": ref_item,
        "top": [_item(r, limits, shown_below) for r in top],
        "diverse": [_item(r, limits, shown_below) for r in diverse],
        "failures": failures,
        "parent_trace": parent_trace,
        "parent_failed": parent is not None and feedback.shown_as_failed(parent),
        "second_trace": second_trace,
        "seed_code": seed_code,
        "seed_fence": fence_for(seed_code),
        "error_feedback": one_line_untrusted(error_feedback, ERROR_FEEDBACK_CHARS) if error_feedback else "",
    }
    return system, user


def _shrink(limits: PromptLimits) -> PromptLimits | None:
    """The next, smaller limits to try when a prompt is over budget (None: nothing left to cut)."""
    if limits.top_k > 3:
        return replace(limits, top_k=limits.top_k - 1)
    if limits.diverse > 1:
        return replace(limits, diverse=limits.diverse - 1)
    if limits.failures > 2:
        return replace(limits, failures=limits.failures - 1)
    if limits.code_chars > 600:
        return replace(limits, code_lines=max(15, limits.code_lines * 2 // 3), code_chars=limits.code_chars * 2 // 3)
    if limits.parent_code_chars > 1500:
        return replace(
            limits,
            parent_code_lines=max(30, limits.parent_code_lines * 2 // 3),
            parent_code_chars=limits.parent_code_chars * 2 // 3,
        )
    if limits.top_k > 1:
        return replace(limits, top_k=limits.top_k - 1)
    if limits.diverse > 0:
        return replace(limits, diverse=0)
    return None


def render_messages(
    ctx: ProposalContext, error_feedback: str | None = None, *, limits: PromptLimits | None = None
) -> list[dict[str, str]]:
    """The OpenAI chat messages (system, user) asking for one new program for ``ctx``.

    ``error_feedback`` is a one-line reason why the previous reply could not be used; it is
    shown at the end of the user message. The total stays under ``limits.max_chars`` whenever
    that is possible by dropping and shortening listings.
    """
    limits = limits or DEFAULT_LIMITS
    current: PromptLimits | None = limits
    messages: list[dict[str, str]] = []
    while current is not None:
        system_values, user_values = _values(ctx, error_feedback, current)
        messages = [
            {"role": "system", "content": _render(SYSTEM_TEMPLATE, **system_values)},
            {"role": "user", "content": _render(PROPOSE_TEMPLATE, **user_values)},
        ]
        if sum(len(m["content"]) for m in messages) <= limits.max_chars:
            break
        current = _shrink(current)
    return messages


def messages_text(messages: Sequence[Mapping[str, Any]]) -> str:
    """Chat messages as one string (``[system]`` / ``[user]`` headers), as stored in ``feedback_shown``."""
    parts = [f"[{m.get('role', 'user')}]\n{str(m.get('content') or '').rstrip()}" for m in messages]
    return "\n\n".join(parts) + "\n"


def render_feedback_text(
    ctx: ProposalContext, error_feedback: str | None = None, *, limits: PromptLimits | None = None
) -> str:
    """The content of :func:`render_messages` as one string: what ``Proposed.feedback_shown`` holds."""
    return messages_text(render_messages(ctx, error_feedback, limits=limits))
