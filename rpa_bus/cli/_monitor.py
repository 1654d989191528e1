"""``rpa-bus monitor`` commands: placeholder until that part lands."""

from __future__ import annotations
