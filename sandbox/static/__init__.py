"""The trusted static reading of a candidate's source, run on the host before any jail starts:
the policy check (``policy``, which reads the allow-list and name tables of the run-time guard in
``sandbox.jail.guard``) and the syntax-tree helpers it shares with the trusted side (``syntax``).
"""
