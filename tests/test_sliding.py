"""The SegEarth-OV crop grid and exact accumulation (SPEC 2.7)."""

from __future__ import annotations

import torch

from reattn_batch.workers.sliding import Box, crop_grid, crop_starts


def test_crop_starts_clamp_the_last_crop_to_the_edge():
    assert crop_starts(448, 224, 112) == [0, 112, 224]
    assert crop_starts(500, 224, 112) == [0, 112, 224, 276]
    assert crop_starts(224, 224, 112) == [0]
    assert crop_starts(225, 224, 112) == [0, 1]
    assert crop_starts(100, 224, 112) == [0]  # smaller than a crop: one crop of its size


def test_grid_covers_every_pixel_with_hand_counted_overlaps():
    boxes = crop_grid(336, 500, 224, 112)
    assert boxes == sorted(boxes)  # global row-major order
    count = torch.zeros(336, 500)
    for b in boxes:
        assert b.shape == (224, 224)
        count[b.y0 : b.y1, b.x0 : b.x1] += 1
    assert count.min() >= 1
    # rows: crops at 0, 112 -> rows 112..223 covered twice; cols: 0,112,224,276
    assert count[0, 0] == 1 and count[120, 0] == 2 and count[120, 250] == 4 and count[120, 290] == 6
    small = crop_grid(100, 60, 224, 112)
    assert small == [Box(0, 0, 100, 60)]
