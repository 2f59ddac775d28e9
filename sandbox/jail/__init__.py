"""Runs inside the jail: the function server, the warm template it is forked from, the run-time
guard and the OS walls.

Imports only ``sandbox.base``, ``sandbox.text``, ``sandbox.wire``, ``sandbox.static`` and this
package itself, never ``sandbox.host`` (the trusted side that starts jails).
"""
