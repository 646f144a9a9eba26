"""`reattn-batch view STORE`: a local web map of a label store (pipeline/viewer/)."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from reattn_batch.viewer.server import DEFAULT_HOST, DEFAULT_PORT

log = logging.getLogger("reattn_batch")


@click.command("view")
@click.argument("store_path", metavar="STORE", type=click.Path(path_type=Path))
@click.option(
    "--scene",
    help="Imagery under the labels (default: the input the store records).",
)
@click.option(
    "--host",
    default=DEFAULT_HOST,
    show_default=True,
    help="Address to listen on (the loopback: only this machine can connect; any other "
    "address is warned about and needs the token in the printed URL).",
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=DEFAULT_PORT,
    show_default=True,
    help="Port to listen on (0: a free one, printed at start).",
)
@click.option(
    "--allow-host",
    "allow_hosts",
    multiple=True,
    metavar="NAME",
    help="Also answer requests naming this host (repeatable), e.g. the name other "
    "machines or a proxy use; the loopback and --host always are.",
)
@click.option("--open", "open_browser", is_flag=True, help="Open the page in a web browser.")
def view_command(
    store_path: Path,
    scene: str | None,
    host: str,
    port: int,
    allow_hosts: tuple[str, ...],
    open_browser: bool,
) -> None:
    """Look at a label STORE in a web browser: labels over the imagery, a legend with areas."""
    from reattn_batch.store import open_for_reading, warn_unfinished
    from reattn_batch.viewer.access import host_name
    from reattn_batch.viewer.server import make_server, serve
    from reattn_batch.viewer.store_view import StoreView

    for name in allow_hosts:  # before reading the store
        host_name(name)
    with open_for_reading(store_path) as ls:
        viewer = StoreView(ls, scene)
    server = make_server(viewer, host, port, allow_hosts=allow_hosts)
    warn_unfinished(ls)
    if viewer.page_info["random_weights"]:
        log.warning("%s was made with RANDOM CLIP weights: its labels mean nothing", store_path)
    serve(server, open_browser, echo=lambda text: click.echo(text, nl=True))
