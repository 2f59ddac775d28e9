"""The trusted static check of a candidate's source, run on the host before any jail starts
(``policy``); it reads the allow-list and name tables of the run-time guard (``sandbox.jail.guard``).
"""
