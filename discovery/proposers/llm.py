"""The LLM proposer: render the context into a prompt, ask the model, parse its reply.

An unusable reply (no code, code that does not parse or does not define the slot) is not an
exception: it becomes ``Proposed(code=None, error=<one line>)``, which the loop records as a
failure so that the reason reaches the next prompt. When the model cannot be reached (every
retry failed), refuses permanently (bad key, unknown model) or the cost budget is spent,
:class:`~discovery.proposers.base.ProposerUnavailable` is raised and the run stops cleanly.

Every attempt of the call, failed or not, comes back as a
:class:`~discovery.proposers.llm_client.CallRecord` in ``Proposed.extra["calls"]`` (the
successful one also in ``extra["call"]``), or in ``ProposerUnavailable.records``: the caller
stores them (the run's graph does, in its ``store`` node).
"""

from __future__ import annotations

from discovery.prompting import PromptLimits, messages_text, render_messages
from discovery.proposers.base import ProposalContext, Proposed, ProposerUnavailable
from discovery.proposers.llm_client import CallRecord, LLMClient, LLMError, ModelSpec
from discovery.proposers.reply_parser import ReplyError, parse_reply

__all__ = ["LLMProposer"]

UNUSABLE_NAME = "unusable-reply"


class LLMProposer:
    """Propose programs with an LLM through ``client`` (thread-safe: no per-call state is kept).

    ``slot_name`` overrides the task's slot name (normally taken from ``ctx.task.slot.name``);
    ``model`` pins one of the client's models (default: the client picks one per call by weight);
    ``limits`` bounds the prompt (see :class:`discovery.prompting.PromptLimits`).
    """

    def __init__(
        self,
        client: LLMClient,
        slot_name: str | None = None,
        *,
        model: ModelSpec | str | None = None,
        limits: PromptLimits | None = None,
    ):
        self.client = client
        self.slot_name = slot_name
        self.model = model
        self.limits = limits
        names = [m.name for m in client.models]
        pinned = model.name if isinstance(model, ModelSpec) else model
        self.name = f"llm:{pinned or (names[0] if len(names) == 1 else '+'.join(names))}"

    def propose(self, ctx: ProposalContext, error_feedback: str | None = None) -> Proposed:
        """One proposal for ``ctx``; ``error_feedback`` (optional) says why the last reply was unusable."""
        slot = self.slot_name or ctx.task.slot.name
        messages = render_messages(ctx, error_feedback, limits=self.limits)
        shown = messages_text(messages)
        ids = [c.id for c in (ctx.parent, ctx.second_parent) if c is not None and c.id]
        parents = list(dict.fromkeys(ids))  # the parent, then the second parent the prompt showed
        attempts: list[CallRecord] = []
        try:
            record = self.client.complete(messages, model=self.model, attempts=attempts)
        except LLMError as exc:
            kind = type(exc).__name__
            raise ProposerUnavailable(f"{self.name}: {kind}: {exc.reason}", records=exc.records) from exc
        proposer = f"llm:{record.model}"
        extra = {"call": record, "calls": attempts, "model": record.model, "finish_reason": record.finish_reason}
        try:
            proposal = parse_reply(record.reply_text or "", slot)
        except ReplyError as exc:
            reason = exc.reason
            if record.finish_reason == "length":
                reason += " (the reply was cut off at the token limit: keep the answer shorter)"
            return Proposed(
                code=None,
                name=UNUSABLE_NAME,
                thought="",
                parents=parents,
                proposer=proposer,
                feedback_shown=shown,
                error=reason,
                extra=extra,
            )
        extra["format"] = proposal.format
        return Proposed(
            code=proposal.code,
            name=proposal.name,
            thought=proposal.thought,
            parents=parents,
            proposer=proposer,
            feedback_shown=shown,
            extra=extra,
        )
