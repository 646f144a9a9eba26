"""The environment variables that change what the program does: one settings model.

Each ``REATTN_BATCH_*`` variable is a field of :class:`EnvironmentSettings` (the variable is
the field's alias), and so is ``XDG_CACHE_HOME``, which places the cache when
``REATTN_BATCH_CACHE`` is unset. The default of each is defined here once, and the program
reads these variables only through :meth:`EnvironmentSettings.from_env`. Unset or blank means
the default; any other text is validated, and a bad value is a UserError naming the variable:
``REATTN_BATCH_CONNECT_TIMEOUT='soon': expected a positive number of seconds``.

README.md, "Environment variables", lists them all.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, BeforeValidator, Field, ValidationError

from reattn_batch.workers.errors import ModelError
from reattn_batch.workers.schema import Settings, first_problem

FUSED_CONV_MODES = ("auto", "on", "off")


def _seconds(text: str | float) -> float:
    try:
        return float(text)
    except ValueError:
        return math.nan  # refused below with the field's own message


def _positive_finite(seconds: float) -> float:
    if not 0 < seconds < math.inf:
        raise ValueError("expected a positive number of seconds")
    return seconds


def _positive(seconds: float) -> float:
    if not seconds > 0:  # nan too
        raise ValueError("expected a positive number of seconds (or inf)")
    return seconds


def _not_negative_finite(seconds: float) -> float:
    if not 0 <= seconds < math.inf:
        raise ValueError("expected a number of seconds, 0 or more")
    return seconds


def _fused_conv_mode(text: str) -> str:
    mode = text.strip().lower()
    if mode not in FUSED_CONV_MODES:
        raise ValueError("choose one of " + ", ".join(FUSED_CONV_MODES))
    return mode


Seconds = Annotated[float, BeforeValidator(_seconds), AfterValidator(_positive_finite)]
SecondsOrInf = Annotated[float, BeforeValidator(_seconds), AfterValidator(_positive)]
Backoff = Annotated[float, BeforeValidator(_seconds), AfterValidator(_not_negative_finite)]
Folder = Annotated[Path, BeforeValidator(lambda text: Path(text).expanduser())]
FusedConv = Annotated[Literal[FUSED_CONV_MODES], BeforeValidator(_fused_conv_mode)]


class EnvironmentSettings(Settings):
    """What the environment sets; field aliases are the variables' names."""

    cache: Folder | None = Field(
        None,
        alias="REATTN_BATCH_CACHE",
        description="cache folder (text embeddings, the SimFeatUp weights); "
        "unset: $XDG_CACHE_HOME/reattn-batch, else ~/.cache/reattn-batch",
    )
    xdg_cache_home: Folder | None = Field(
        None,
        alias="XDG_CACHE_HOME",
        description="where the cache folder goes when REATTN_BATCH_CACHE is unset",
    )
    progress_interval: Seconds = Field(
        10.0,
        alias="REATTN_BATCH_PROGRESS_INTERVAL",
        description="seconds between progress log lines when the output is not a terminal",
    )
    connect_timeout: SecondsOrInf = Field(
        15.0,
        alias="REATTN_BATCH_CONNECT_TIMEOUT",
        description="seconds to wait for an existing scheduler (--scheduler, "
        "--scheduler-file); inf: wait for ever",
    )
    read_backoff: Backoff = Field(
        1.0,
        alias="REATTN_BATCH_READ_BACKOFF",
        description="seconds before the first retry of a failed remote read, "
        "doubled after each further failure",
    )
    fused_conv: FusedConv = Field(
        "auto",
        alias="REATTN_BATCH_FUSED_CONV",
        description="compile the upsampler's adaptive convolution: on, off, or auto "
        "(on for CUDA, off on the CPU)",
    )

    allow_private_hrefs: bool = Field(
        False,
        alias="REATTN_BATCH_ALLOW_PRIVATE_HREFS",
        description="1: hrefs named by remote STAC documents (assets, Items, pages) may be "
        "on loopback, private or link-local hosts; 0: only on public hosts or the "
        "document's own origin",
    )
    stac_timeout: Seconds = Field(
        30.0,
        alias="REATTN_BATCH_STAC_TIMEOUT",
        description="seconds a STAC server (an Item, a catalog, an API) may take to accept "
        "a connection or to send more of a document; a whole document gets 4 times this",
    )

    @classmethod
    def variable(cls, field: str) -> str:
        """The environment variable of ``field``: ``variable("cache")`` -> REATTN_BATCH_CACHE."""
        alias = cls.model_fields[field].alias
        assert alias is not None
        return alias

    @classmethod
    def from_env(
        cls, *fields: str, environ: Mapping[str, str] | None = None
    ) -> EnvironmentSettings:
        """The settings from ``environ`` (default ``os.environ``): only the variables of
        ``fields`` are read (all when none are named; the others keep their defaults), so a
        bad value of one variable is reported where that variable is used."""
        environ = os.environ if environ is None else environ
        given = {}
        for field in fields or tuple(cls.model_fields):
            name = cls.variable(field)
            if text := environ.get(name, "").strip():
                given[name] = text
        try:
            return cls.model_validate(given)
        except ValidationError as exc:
            problem = first_problem(exc)
            name = str(problem.loc[0])
            raise ModelError(f"{name}={given.get(name)!r}: {problem.msg}") from None

    @property
    def cache_root(self) -> Path:
        """$REATTN_BATCH_CACHE, else $XDG_CACHE_HOME/reattn-batch, else ~/.cache/reattn-batch."""
        if self.cache is not None:
            return self.cache
        return (self.xdg_cache_home or Path.home() / ".cache") / "reattn-batch"


def cache_root() -> Path:
    """The cache folder the environment names (see :attr:`EnvironmentSettings.cache_root`)."""
    return EnvironmentSettings.from_env("cache", "xdg_cache_home").cache_root
