"""The script ``discovery dashboard`` hands to ``streamlit run`` (it ships inside the package)."""

import sys

from discovery.dashboard.app import db_from_argv, main

main(db_from_argv(sys.argv[1:]))
