"""`reattn-batch segment`: one image into the given classes."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import click

from reattn_batch.cli.options import (
    build_classes,
    build_model_spec,
    model_options,
    parse_resize,
    report_option,
    resize_option,
)
from reattn_batch.workers.errors import UserError

log = logging.getLogger("reattn_batch")


@click.command("segment")
@click.argument("image", type=click.Path(path_type=Path))
@model_options
@resize_option
@click.option(
    "-o", "--output", type=click.Path(path_type=Path), help="uint8 label PNG at the input size."
)
@click.option(
    "--save-logits",
    type=click.Path(path_type=Path),
    help="float32 .npy (Q, H, W): mean raw crop logits at the input size.",
)
@report_option
def segment_command(
    image: Path,
    resize: str,
    output: Path | None,
    save_logits: Path | None,
    report: Path | None,
    **model: Any,
) -> None:
    """Segment one image (PNG, JPEG, TIFF) into the given classes."""
    from reattn_batch.image.segment import segment_file
    from reattn_batch.report import Clock, write_clock

    clock = Clock()
    long_side = parse_resize(resize)
    spec = build_model_spec(model)
    classes = build_classes(model, spec.cfg.prob_thd)
    if output is None and save_logits is None:
        raise UserError("nothing to write: pass -o PRED.png and/or --save-logits LOGITS.npy")
    result = segment_file(image, spec, classes, long_side, clock)
    with clock.phase("write"):
        if save_logits is not None:
            import numpy as np

            np.save(save_logits, result.logits)
            log.info("wrote logits %s %s", save_logits, result.logits.shape)
        if output is not None:
            from reattn_batch.image.io import write_label_png

            write_label_png(output, result.labels)
            log.info("wrote labels %s", output)
    if report is not None:
        write_clock(report, clock)
        log.info("wrote report %s", report)
