"""The four grids of a scene job (SPEC 3.1), in one place.

- native grid: the scene's pixels (rows, cols), with its CRS transform;
- model grid: the scene resampled by f = native_gsd / model_gsd, so that the model
  sees ``model_gsd`` metres per pixel. Per axis the exact ratio is
  ``scale = native_size / model_size`` native px per model px, and model pixel i has
  its centre at native coordinate ``(i + 0.5) * scale - 0.5`` (the half-pixel
  convention of OpenCV and torch's align_corners=False);
- crop grid: ONE global grid of crops (224 at stride 112, last clamped) over the
  model grid (reattn_batch.workers.sliding.crop_grid);
- block grid: output blocks of ``block`` native pixels (a multiple of the Zarr chunk),
  odc-geo's tiling of the native shape (``BlockGrid.tiles``; the georeferenced native grid
  is the scene's GeoBox, grid/raster.py).

Each block's task needs: its native output box, the model-grid region whose logits
resample to that box, the crops touching that region, and the native window that
covers those crops' pixels. All of it is a function of global coordinates only,
which is what makes the stitched labels independent of the block size.
"""

from __future__ import annotations

import bisect
import dataclasses

from odc.geo.roi import Tiles

from reattn_batch.grid.resample import Axis, Resampler
from reattn_batch.workers.sliding import Box, crop_grid, crop_starts


@dataclasses.dataclass(frozen=True)
class ModelGrid:
    """The model grid over a native grid of ``native_shape``; see module docstring."""

    native_shape: tuple[int, int]
    shape: tuple[int, int]

    @classmethod
    def for_gsd(
        cls, native_shape: tuple[int, int], native_gsd: float, model_gsd: float
    ) -> ModelGrid:
        """Model size round(native * f) per axis (at least 1), f = native_gsd / model_gsd."""
        f = native_gsd / model_gsd
        shape = tuple(max(1, round(n * f)) for n in native_shape)
        return cls(native_shape=native_shape, shape=shape)  # type: ignore[arg-type]

    @property
    def is_native(self) -> bool:
        """True when the model grid is the native grid (no resampling at all)."""
        return self.shape == self.native_shape

    @property
    def rows(self) -> Axis:
        """Native -> model axis mapping for rows."""
        return Axis(self.native_shape[0], self.shape[0])

    @property
    def cols(self) -> Axis:
        return Axis(self.native_shape[1], self.shape[1])

    @property
    def to_model(self) -> Resampler:
        """Native -> model resampling (the image in)."""
        return Resampler(self.rows, self.cols, from_model=False)

    @property
    def to_native(self) -> Resampler:
        """Model -> native resampling (the logits back)."""
        return Resampler(self.rows, self.cols, from_model=True)

    def model_box_for_native(self, box: Box) -> Box:
        """Model pixels whose logits bilinear resampling to native ``box`` reads."""
        if self.is_native:
            return box
        return self.to_native.sources((box.y0, box.y1), (box.x0, box.x1))

    def native_box_for_model(self, box: Box) -> Box:
        """Native pixels whose values bilinear resampling to model ``box`` reads."""
        if self.is_native:
            return box
        return self.to_model.sources((box.y0, box.y1), (box.x0, box.x1))


@dataclasses.dataclass(frozen=True)
class Block:
    """One output block and what its task needs.

    index: position in the block grid, row-major; native: output box (native px);
    model: model-grid region to accumulate logits over; crops: the global crops touching
    ``model``, in global order; crop_box: their union (model px); read: the native
    window covering ``crop_box``'s source pixels and ``native``.
    """

    index: int
    native: Box
    model: Box
    crop_box: Box
    read: Box


@dataclasses.dataclass(frozen=True)
class BlockGrid:
    """Blocks of ``block`` native px over a scene, and the global crop grid."""

    model_grid: ModelGrid
    block: int
    crop: int
    stride: int

    @property
    def native_shape(self) -> tuple[int, int]:
        return self.model_grid.native_shape

    @property
    def tiles(self) -> Tiles:
        """The blocks as odc-geo tiles of the native shape: ``block`` x ``block`` px in
        rows and columns from (0, 0), the last of each axis cut at the scene's edge."""
        return Tiles(self.native_shape, (self.block, self.block))

    @property
    def counts(self) -> tuple[int, int]:
        """Blocks per axis (rows, cols): ceil(native size / block)."""
        return self.tiles.shape.yx

    def __len__(self) -> int:
        rows, cols = self.counts
        return rows * cols

    @property
    def crop_count(self) -> int:
        """How many crops the global crop grid has, counted without listing them."""
        mh, mw = self.model_grid.shape
        return len(crop_starts(mh, self.crop, self.stride)) * len(
            crop_starts(mw, self.crop, self.stride)
        )

    def crops(self) -> list[Box]:
        """Every crop of the global crop grid, in global order."""
        return crop_grid(*self.model_grid.shape, self.crop, self.stride)

    def crops_touching(self, region: Box) -> list[Box]:
        """The global crops that intersect ``region`` (model px), in global order."""
        mh, mw = self.model_grid.shape
        ys = [
            y
            for y in crop_starts(mh, self.crop, self.stride)
            if y < region.y1 and y + self.crop > region.y0
        ]
        xs = [
            x
            for x in crop_starts(mw, self.crop, self.stride)
            if x < region.x1 and x + self.crop > region.x0
        ]
        return [Box(y, x, min(y + self.crop, mh), min(x + self.crop, mw)) for y in ys for x in xs]

    def block_at(self, index: int) -> Block:
        rows, cols = self.counts
        if not 0 <= index < rows * cols:
            raise IndexError(index)
        ys, xs = self.tiles[divmod(index, cols)]
        native = Box(ys.start, xs.start, ys.stop, xs.stop)
        model = self.model_grid.model_box_for_native(native)
        crops = self.crops_touching(model)
        crop_box = Box(
            min(b.y0 for b in crops),
            min(b.x0 for b in crops),
            max(b.y1 for b in crops),
            max(b.x1 for b in crops),
        )
        sources = self.model_grid.native_box_for_model(crop_box)
        read = Box(  # also covers the output box itself, for its nodata mask
            min(sources.y0, native.y0), min(sources.x0, native.x0),
            max(sources.y1, native.y1), max(sources.x1, native.x1),
        )  # fmt: skip
        return Block(index=index, native=native, model=model, crop_box=crop_box, read=read)

    def blocks(self) -> list[Block]:
        return [self.block_at(i) for i in range(len(self))]

    def axis_model_ranges(self, axis: int) -> list[tuple[int, int]]:
        """Per block along ``axis`` (0 rows, 1 cols): its model-grid range [lo, hi).

        The same ranges as ``block_at(i).model`` (a block's model box is the product
        of its row range and its column range), without building any block.
        """
        size = self.native_shape[axis]
        starts = range(0, size, self.block)
        native = [(s, min(s + self.block, size)) for s in starts]
        if self.model_grid.is_native:
            return native
        mapping = self.model_grid.rows if axis == 0 else self.model_grid.cols
        return [mapping.sources_for_targets(lo, hi, from_model=True) for lo, hi in native]

    def axis_crop_runs(self, axis: int) -> tuple[int, int]:
        """(sum over blocks along ``axis`` of the crop starts touching each, crop starts).

        Crops touching a block are the product of the starts touching its row range and
        those touching its column range, so summed over all blocks the crop runs are
        ``rows_sum * cols_sum``: O(blocks per axis * log(crops per axis)).
        """
        starts = crop_starts(self.model_grid.shape[axis], self.crop, self.stride)
        runs = sum(
            bisect.bisect_left(starts, hi) - bisect.bisect_right(starts, lo - self.crop)
            for lo, hi in self.axis_model_ranges(axis)
        )
        return runs, len(starts)

    def crop_runs(self) -> int:
        """Crops run by all blocks together (halo duplicates included)."""
        return self.axis_crop_runs(0)[0] * self.axis_crop_runs(1)[0]

    def halo_redundancy(self) -> float:
        """Extra crop runs from halos: sum over blocks of their crops / crops in the scene - 1.

        Computed separably per axis (:meth:`axis_crop_runs`), O(blocks per axis).
        """
        (rows, n_rows), (cols, n_cols) = self.axis_crop_runs(0), self.axis_crop_runs(1)
        return rows * cols / (n_rows * n_cols) - 1.0

    def owner_of(self, crop: Box) -> int:
        """The block whose native box holds ``crop``'s centre: every crop has exactly one.

        The centre in model edge coordinates, (y0 + y1) / 2, is scaled to native edge
        coordinates and floored to a native pixel (integer arithmetic, clamped).
        """
        (mh, mw), (h, w) = self.model_grid.shape, self.native_shape
        row = min((crop.y0 + crop.y1) * h // (2 * mh), h - 1)
        col = min((crop.x0 + crop.x1) * w // (2 * mw), w - 1)
        tiles = self.tiles
        block_row, block_col = tiles.locate((row, col))
        return block_row * tiles.shape.x + block_col
