"""The exceptions that reach a user: one base, a few kinds, one line each.

Every problem with a user's input or environment is a :class:`ReattnError`; its message is
one line that names the problem and the fix. Messages name the *Python* parameter the
problem is in: ``name=value`` for a parameter and its value (``upsampler_weights=x.ckpt:
no such file``), `` `name` `` for a parameter alone. The command line is the only layer
that speaks in flags: it rewrites those names to its options (``--upsampler-weights
x.ckpt``; reattn_batch.cli.errors) and prints the line without a traceback.

| class          | what is wrong                                                  |
|----------------|----------------------------------------------------------------|
| InputError     | an argument, setting, class list, image, scene or job spec     |
| ModelError     | weights, upsampler checkpoints, the device, the model's config |
| StoreError     | an output store: missing, foreign, unfinished, busy, too old   |
| ClusterError   | the Dask cluster: no workers, lost scheduler, connection       |
"""

from __future__ import annotations


class ReattnError(Exception):
    """Base of every reattn-batch error a user should see as one line (no traceback)."""


#: The name this base had before the hierarchy; every error is still a UserError.
UserError = ReattnError


class InputError(ReattnError, ValueError):
    """A bad argument, setting, class list, image, scene or job spec."""


class ModelError(ReattnError):
    """The model cannot be built or run: weights, checkpoints, device, method config."""


class StoreError(ReattnError):
    """An output store cannot be created, resumed, read or replaced."""


class ClusterError(ReattnError):
    """The Dask cluster cannot run the job: no workers, a lost scheduler, a connection."""
