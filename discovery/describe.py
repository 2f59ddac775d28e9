"""How a candidate's outcome reads to a person: the text ``discovery show`` and the dashboard print.

Built from the record's structured fields (``status``, ``failed_stage``, ``error_class``,
``error_line``, ``error_message``, ``duplicate_of``), never by reading ``reason``: e.g.
``error at contract: NameError line 3 — name 'hx' is not defined``. The text is plain and
unescaped (candidate messages are untrusted): each renderer escapes it for its own markup.
"""

from __future__ import annotations

from discovery.records import Candidate
from sandbox.base import Status


def status_label(c: Candidate) -> str:
    """The status with the stage it stopped at: ``ok``, ``invalid at contract``, ``parse`` (at its own stage)."""
    stage = c.failed_stage
    if c.status is Status.OK or not stage or stage == c.status.value:
        return c.status.value
    return f"{c.status.value} at {stage}"


def failure_detail(c: Candidate) -> str:
    """What went wrong, without the status: ``NameError line 3 — message`` when the candidate raised,
    else its reason (``line N: reason`` when a line is known); "" for an ``ok`` candidate."""
    if c.status is Status.OK:
        return ""
    if c.error_class:
        where = f" line {c.error_line}" if c.error_line else ""
        return c.error_class + where + (f" — {c.error_message}" if c.error_message else "")
    reason = (c.reason or "").strip()
    if c.status is Status.DUPLICATE and c.duplicate_of and not reason:
        return f"duplicate of {c.duplicate_of}"
    if c.error_line:
        where = f"line {c.error_line}"
        # the static policy's reasons start with their location already: compared, not parsed
        return reason if reason.startswith(where + ":") else f"{where}: {reason}" if reason else where
    return reason


def outcome_line(c: Candidate) -> str:
    """``ok``, or ``<status> at <stage>: <detail>`` (see :func:`failure_detail`)."""
    detail = failure_detail(c)
    return f"{status_label(c)}: {detail}" if detail else status_label(c)


def extra_reason(c: Candidate) -> str:
    """The stored reason when :func:`outcome_line` did not show it (it was built from the error
    fields), for the context it adds (which configuration and seed, the code line); else ""."""
    if c.status is Status.OK or not c.error_class:
        return ""
    return (c.reason or "").strip()
