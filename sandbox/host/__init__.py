"""The trusted side that starts, feeds and watches jails: the local and Docker backends, one
session's channel and deadline, the worker pool and the session directory's files.

Never imports ``sandbox.jail``: a jail module is started by its ``-m`` path (``sandbox.jail.template``,
``sandbox.jail.function_server``), and what both sides agree on lives in ``sandbox.wire``.
"""
