"""The leaderboard dashboard: ``streamlit run app.py -- --db runs.db`` (or ``discovery dashboard``).

The pages live in ``discovery.dashboard``; this file only hands them the archive path.
"""

import sys

from discovery.dashboard.app import db_from_argv, main

main(db_from_argv(sys.argv[1:]))
