"""The agent graph on the run page: LangGraph's Mermaid drawing of the candidate pipeline.

The text is :func:`discovery.agent.graph_drawing.mermaid`, the same as in
``docs/architecture.md``; Streamlit renders it in the browser (``st.mermaid_chart``, with the
labels' ``&nbsp;`` padding as spaces) and the exact source sits in an expander below it.
"""

from __future__ import annotations

import streamlit as st

CAPTION = (
    "How each candidate of a run goes: one LangGraph graph per candidate. Dotted edges are decisions, "
    "labelled with their branch; a failure is stored by record_failure, an unusable LLM reply goes back to "
    "propose (a bounded number of times per slot), and a leader gets one more seed per extra_seeds round."
)


@st.cache_data(show_spinner=False)
def _mermaid() -> str:
    from discovery.agent.graph_drawing import mermaid  # the agent's modules, only when the page shows it

    return mermaid()


def for_streamlit(text: str) -> str:
    """``text`` with LangGraph's ``&nbsp;`` label padding as plain spaces (same diagram, readable labels)."""
    return text.replace("&nbsp;", " ")


def agent_graph() -> None:
    """A subheader, the rendered graph, a caption, and the Mermaid source in an expander."""
    text = _mermaid()
    st.subheader("The agent graph")
    # LangGraph pads edge labels with &nbsp;, which Streamlit's Mermaid (SVG labels) prints verbatim
    st.mermaid_chart(
        for_streamlit(text), alt="The candidate pipeline: propose, store, checks, cascade, full suite, extra seeds"
    )
    st.caption(CAPTION)
    with st.expander("Mermaid source"):
        st.code(text, language="text")
