"""Matching border pieces across block edges into the regions of the whole raster."""

from __future__ import annotations

import numpy as np

from reattn_batch.outputs.vector.polygonize import BlockResult


def _pairs(a: np.ndarray, b: np.ndarray, diagonal: bool) -> np.ndarray:
    """(k, 2) id pairs of neighbouring pixels across one edge: a[i] - b[i], and with
    ``diagonal`` also a[i] - b[i +- 1]; pixels off the selection (id -1) are left out."""
    out = [np.column_stack((a, b))]
    if diagonal:
        out += [np.column_stack((a[:-1], b[1:])), np.column_stack((a[1:], b[:-1]))]
    pairs = np.concatenate(out)
    return pairs[(pairs[:, 0] >= 0) & (pairs[:, 1] >= 0)]


def seam_pairs(
    results: dict[int, BlockResult], grid: tuple[int, int], connectivity: int
) -> np.ndarray:
    """(k, 2) ids of border pieces that are neighbours across an internal block edge
    (candidates: same-class filtering happens in ``regions_across_blocks``)."""
    rows, cols = grid
    diagonal = connectivity == 8
    found: list[np.ndarray] = [np.empty((0, 2), np.int64)]
    for br in range(rows):
        for bc in range(cols):
            here = results[br * cols + bc]
            if bc + 1 < cols:
                found.append(_pairs(here.right, results[br * cols + bc + 1].left, diagonal))
            if br + 1 < rows:
                found.append(_pairs(here.bottom, results[(br + 1) * cols + bc].top, diagonal))
            if diagonal and br + 1 < rows and bc + 1 < cols:
                below_right = results[(br + 1) * cols + bc + 1]
                right = results[br * cols + bc + 1]
                below = results[(br + 1) * cols + bc]
                corners = np.array(
                    [[here.bottom[-1], below_right.top[0]], [right.bottom[0], below.top[-1]]]
                )
                found.append(corners[(corners >= 0).all(axis=1)])
    return np.unique(np.concatenate(found), axis=0)


def regions_across_blocks(
    results: dict[int, BlockResult],
    grid: tuple[int, int],
    connectivity: int,
    classes_of: dict[int, int],
) -> list[np.ndarray]:
    """The regions of the whole raster made of border pieces: lists of piece ids, each
    sorted, ordered by their first id. A piece with no partner is a region of its own."""
    import networkx as nx

    graph = nx.Graph()
    graph.add_nodes_from(int(i) for r in results.values() for i in r.border_ids)
    for u, v in seam_pairs(results, grid, connectivity).tolist():
        if classes_of[u] == classes_of[v]:
            graph.add_edge(u, v)
    groups = [np.sort(np.fromiter(c, np.int64)) for c in nx.connected_components(graph)]
    groups.sort(key=lambda g: int(g[0]))
    return groups
