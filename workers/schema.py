"""The base of every settings model of the project, and reading a failed validation.

One schema family: the run settings (``reattn_batch.settings``: flags, job specs),
the method configuration (:mod:`reattn_batch.workers.config`: configs/method.yaml) and the
environment (:mod:`reattn_batch.workers.environment`: ``$REATTN_BATCH_*``) are pydantic
models on :class:`Settings`. Each family member words its errors for where its values come
from (a flag, a file and key, a variable); :func:`first_problem` is the part they share.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from pydantic import BaseModel, ConfigDict, ValidationError


class Settings(BaseModel):
    """Base of every settings model: unknown keys are refused, values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Problem(NamedTuple):
    """One validation error: the key path, its message (without pydantic's "Value error, "
    prefix), its pydantic error type ("extra_forbidden", "missing", "value_error", ...) and
    the value given."""

    loc: tuple[str | int, ...]
    msg: str
    kind: str
    value: Any


def first_problem(exc: ValidationError, prefer: tuple[str, ...] = ()) -> Problem:
    """The first error of ``exc``; error types listed in ``prefer`` come first, in that
    order (e.g. ``("extra_forbidden", "missing")``: an unknown key before a bad value)."""
    errors = exc.errors()
    ranked = sorted(
        range(len(errors)),
        key=lambda i: (
            prefer.index(errors[i]["type"]) if errors[i]["type"] in prefer else len(prefer),
            i,
        ),
    )
    first = errors[ranked[0]]
    msg = first["msg"].removeprefix("Value error, ")
    return Problem(tuple(first["loc"]), msg, first["type"], first.get("input"))
