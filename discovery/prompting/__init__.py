"""The prompt side of a proposal: what a proposer is shown about the archive.

* :mod:`~discovery.prompting.feedback` -- OPTO-style text about single candidates (failure
  digests, annotated errors, per-configuration deltas, curve digests, a candidate's trace);
* :mod:`~discovery.prompting.builder` -- a :class:`~discovery.selection.ProposalContext` rendered
  into the chat messages an LLM proposer sends, bounded in size;
* ``templates`` -- the Jinja2 templates (``system.j2``, ``propose.j2``): the checkout's top-level
  ``prompts/`` folder, shipped in the wheel as ``discovery.prompting.templates``.

Nothing here imports a proposer: the proposers use this package, never the other way round.
"""

from discovery.prompting.builder import (
    PROMPTS_DIR,
    PromptLimits,
    messages_text,
    missing_templates,
    render_feedback_text,
    render_messages,
)
from discovery.prompting.feedback import (
    annotated_error,
    candidate_trace,
    clip_code,
    config_deltas,
    config_summary,
    curve_digest,
    failure_digest,
    fitness_text,
    shown_as_failed,
)

__all__ = [
    "PROMPTS_DIR",
    "PromptLimits",
    "annotated_error",
    "candidate_trace",
    "clip_code",
    "config_deltas",
    "config_summary",
    "curve_digest",
    "failure_digest",
    "fitness_text",
    "messages_text",
    "missing_templates",
    "render_feedback_text",
    "render_messages",
    "shown_as_failed",
]
