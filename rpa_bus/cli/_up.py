"""``rpa-bus up`` commands: placeholder until that part lands."""

from __future__ import annotations
