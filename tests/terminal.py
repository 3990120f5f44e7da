"""What the command line shows, recorded: a rich Console writing plain text to memory."""

from __future__ import annotations

import io

from rich.console import Console

_BORDERS = str.maketrans("", "", "│┃┌┐└┘├┤┬┴┼─━┏┓┗┛┡┩╇")


def recording_console() -> tuple[Console, io.StringIO]:
    """A console 200 columns wide, without colours, and where what it writes goes."""
    out = io.StringIO()
    return Console(file=out, width=200, color_system=None, force_terminal=False), out


def shown_rows(out: io.StringIO) -> list[str]:
    """The lines shown, without the tables' borders, their words one space apart."""
    return [" ".join(line.translate(_BORDERS).split()) for line in out.getvalue().splitlines()]
