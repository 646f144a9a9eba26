"""The command line's words for the library's errors (the one place that speaks in flags).

Library messages name Python parameters (reattn_batch.workers.errors): ``name=value`` and
`` `name` ``. Here each parameter that is also an option of a command becomes that option:
``upsampler_weights=x.ckpt`` -> ``--upsampler-weights x.ckpt``, ``upsampler='bilinear'``
-> ``--upsampler bilinear``, ``overwrite=True`` -> ``--overwrite``, `` `bands` `` ->
``--bands``. The table is read from the commands' own options, so a new option needs no
entry here; :data:`SPELLED` lists the few keywords the CLI spells otherwise.
"""

from __future__ import annotations

import re
from functools import cache

import click

#: Python keywords whose command-line spelling is not their option's name.
SPELLED = {
    "background=False": "--no-background",
    "background=True": "no --no-background",
    "`background`": "--no-background",
    "`config_file`": "--config",
    "config_file=": "--config ",
}


@cache
def _options(group: click.Group) -> dict[str, tuple[str, bool]]:
    """{python name: (long flag, is a boolean flag)} over every command of ``group``."""
    table: dict[str, tuple[str, bool]] = {}

    def visit(command: click.Command) -> None:
        for param in command.params:
            if isinstance(param, click.Option) and param.name:
                longs = [o for o in param.opts if o.startswith("--")]
                if longs:
                    table.setdefault(param.name, (max(longs, key=len), bool(param.is_flag)))
        if isinstance(command, click.Group):
            for sub in command.commands.values():
                visit(sub)

    visit(group)
    table.pop("help", None)
    return table


def as_flags(message: str, group: click.Group) -> str:
    """``message`` with the Python parameters it names written as ``group``'s options."""
    for text, flag in SPELLED.items():
        message = message.replace(text, flag)
    for name, (flag, is_flag) in sorted(_options(group).items(), key=lambda kv: -len(kv[0])):
        start = rf"(?<![\w.`-]){re.escape(name)}"
        message = re.sub(rf"`{re.escape(name)}`", flag, message)
        if is_flag:
            message = re.sub(rf"{start}=True\b", flag, message)
            message = re.sub(rf"{start}=False\b", f"no {flag}", message)
            continue
        message = re.sub(
            rf"{start}=(?:'([^']*)'|\"([^\"]*)\")",
            lambda m, flag=flag: f"{flag} {m.group(1) if m.group(1) is not None else m.group(2)}",
            message,
        )
        message = re.sub(rf"{start}=", f"{flag} ", message)
    return message
