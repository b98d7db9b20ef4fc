"""Errors of the access domain (all ``common.errors`` classes with their standard codes).

- ``StrongerKey`` (403 ``forbidden``): a key asked to mint a key with a scope it lacks;
  ``details.exceeds`` lists them.
- ``RoleTooLow`` (403 ``forbidden``): the caller's role may not do this (a developer
  managing another member's keys, an admin granting ``owner``).
"""

from __future__ import annotations

from common.errors import Forbidden


class StrongerKey(Forbidden):
    pass


class RoleTooLow(Forbidden):
    pass
