"""``rpa-bus relay`` commands: placeholder until that part lands."""

from __future__ import annotations
