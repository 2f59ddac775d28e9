"""Jails for candidate code, and the trusted side that starts, feeds and watches them.

Layout and import rules (``tests/test_layers.py`` checks them):

* ``sandbox.text``, ``sandbox.base``, ``sandbox.wire``: what both sides share: one-line reason
  helpers (no imports), the interface (``Status``, ``Limits``, ``Job``, ``Outcome``, the
  ``Sandbox`` ABC), and the protocol between host and jail (framed messages, the session
  directory's file names, :class:`~sandbox.wire.JailSpec`). They import no other sandbox module
  but each other, in one direction (``wire`` imports ``base``).
* ``sandbox.jail``: runs inside the jail (function server, warm template, run-time guard, OS
  walls); imports only the shared modules, ``sandbox.static`` and itself, never ``sandbox.host``.
* ``sandbox.static``: the trusted static check, run on the host before any jail starts
  (``policy``, which reads the guard's tables in ``sandbox.jail.guard``; ``syntax``, its syntax-tree
  helpers).
* ``sandbox.host``: the trusted side (local and Docker backends, sessions, the worker pool, the
  session directory's files); never imports ``sandbox.jail``, whose modules it starts by their
  ``-m`` path only.

No module imports another that imports it back, and nothing in ``sandbox`` imports ``discovery``.
"""
