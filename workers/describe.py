"""One line about an exception, for messages and warnings."""

from __future__ import annotations


def one_line(e: BaseException) -> str:
    """``Type: first line of the message`` (160 characters at most), or just the type."""
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:160]}" if text else type(e).__name__
