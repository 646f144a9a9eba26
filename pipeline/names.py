"""Names made from free or untrusted text (a STAC Item id, a class name): one rule for
which characters a name keeps. It imports nothing of the project, so any module may use it.
"""

from __future__ import annotations

import re

#: A run of characters a name does not keep: anything but ASCII letters, digits, _ and -.
_NOT_KEPT = re.compile(r"[^0-9A-Za-z_-]+")


def name_characters(text: str) -> str:
    """``text`` with each run of characters other than ASCII letters, digits, ``_`` and
    ``-`` replaced by one ``_`` (``"a b/c"`` -> ``"a_b_c"``); callers strip the ends as
    they need."""
    return _NOT_KEPT.sub("_", text)
