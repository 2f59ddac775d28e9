"""Routing for the dashboard: which page a URL shows, and where the archive is.

``?candidate=ID`` shows a candidate, ``?run=ID`` a run, anything else the leaderboard.
The archive path comes from ``--db`` after Streamlit's ``--`` (``streamlit run app.py --
--db runs.db``), else the ``DISCOVERY_DB`` environment variable, else ``runs.db``.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import streamlit as st

from . import data, views

DEFAULT_DB = "runs.db"


def db_from_argv(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> str:
    """The archive path from ``--db PATH`` in ``argv``, else ``$DISCOVERY_DB``, else ``runs.db``."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--db")
    known, _ = parser.parse_known_args(list(argv))
    env = os.environ if environ is None else environ
    return known.db or env.get("DISCOVERY_DB") or DEFAULT_DB


def main(db: str | Path) -> None:
    """Render the page the query parameters ask for, reading ``db`` only."""
    st.set_page_config(page_title="discovery dashboard", layout="wide")
    db = str(db)
    opened = data.open_archive(db)
    if opened.archive is None:
        views.welcome(db, opened)
        return
    try:
        runs = data.runs(opened.archive)
    finally:
        opened.close()
    views.sidebar(db, runs)
    params = st.query_params
    candidate_id = params.get("candidate")
    run_id = params.get("run")
    if candidate_id:
        views.candidate_page(db, candidate_id)
    elif run_id:
        views.run_page(db, run_id)
    else:
        views.leaderboard_page(db)
