"""``rpa-bus emit``: placeholder until the producer lands."""

from __future__ import annotations
