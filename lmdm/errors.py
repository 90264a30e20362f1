"""The family of errors a user can fix: bad input, a missing file, a config that does not describe a valid run.

Every check of user input raises a subclass of :class:`LmdmError`, defined next to the concept it checks
(``ConfigError`` in ``lmdm.config``, ``AudioError`` in ``lmdm.audio.sanitize``, ``CheckpointError`` in
``lmdm.checkpoint`` ...). The command line prints these as one ``lmdm: error: ...`` line (exit status 2);
anything else is a bug and keeps its traceback. Subclasses also derive from the builtin that fits (``ValueError``
for a bad value, ``RuntimeError`` for a state that cannot proceed), so library callers can catch either.
"""
from __future__ import annotations


class LmdmError(Exception):
    """Base of every error whose message tells the user what was wrong and what is accepted."""


class UsageError(LmdmError, ValueError):
    """A value given to a command or a public function is outside what it accepts (the message says what is)."""
