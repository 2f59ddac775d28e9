"""The leaderboard dashboard (Streamlit). Not built yet: see issue "Leaderboard dashboard"."""

import streamlit as st

st.title("discovery leaderboard")
st.info("The dashboard is not built yet. Use `discovery baselines --task preference` meanwhile.")
