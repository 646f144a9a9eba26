"""One line about an exception, for messages, warnings and a failed scene's record."""

from __future__ import annotations

from reattn_batch.workers.errors import ReattnError

#: The most characters of an outside text (an exception's message, a bad value) that a
#: message shows.
SHOWN_CHARS = 200


def one_line(e: BaseException, limit: int | None = SHOWN_CHARS) -> str:
    """The message on one line (whitespace runs joined), ``limit`` characters at most
    (None: all), after ``Type: `` unless it is a ReattnError (already a sentence for the
    user); just the type where there is no message."""
    text = " ".join(str(e).split())
    if limit is not None:
        text = text[:limit]
    if isinstance(e, ReattnError):
        return text or type(e).__name__
    return f"{type(e).__name__}: {text}" if text else type(e).__name__
