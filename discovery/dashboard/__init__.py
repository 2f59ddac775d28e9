"""The Streamlit leaderboard dashboard over a discovery archive (read-only).

``data`` holds the read-only queries (pandas frames built from the archive's records, no
Streamlit), ``views`` renders them, ``app.main(db)`` routes between the pages by query
parameter. The root ``app.py`` (``streamlit run app.py -- --db runs.db``) and ``discovery
dashboard`` both end in ``app.main``.
"""

from pathlib import Path


def entry_script() -> Path:
    """The script ``streamlit run`` serves: shipped inside the package, so it works from a wheel too."""
    return Path(__file__).resolve().parent / "entry.py"
