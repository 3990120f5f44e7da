"""Effort levels: how much CPU an encoder may spend for fewer bytes at the same look."""

from __future__ import annotations

import enum


class Effort(enum.StrEnum):
    BALANCED = "balanced"  # fewer bytes than the format's plain settings, for little CPU
    MAX = "max"  # the fewest bytes at the same look, for several times balanced's CPU
