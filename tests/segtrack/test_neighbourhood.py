"""Neighbourhood masks and offsets against the spec's cell counts and a brute-force definition."""

from __future__ import annotations

import math

import pytest
import torch

from dinotracker.segtrack.neighbourhood import (
    make_neighborhood_mask,
    neighborhood_offsets,
    neighborhood_size,
    offsets_from_mask,
)


@pytest.mark.parametrize(
    "size,circle,square", [(5, 81, 121), (12, 441, 625), (24, 1793, 2401), (36, 4053, 5329)]
)
def test_interior_cell_counts(size, circle, square):
    assert neighborhood_size(size, "circle") == circle
    assert neighborhood_size(size, "square") == square


def test_mask_interior_count_and_corner():
    m = make_neighborhood_mask(30, 31, 12, "circle")
    assert m.shape == (30, 31, 30, 31) and m.dtype == torch.bool
    assert int(m[15, 15].sum()) == 441  # interior query: the full disc
    sq = make_neighborhood_mask(30, 31, 12, "square")
    assert int(sq[15, 15].sum()) == 625
    # corner (0, 0): the quarter square 13 x 13
    assert int(sq[0, 0].sum()) == 13 * 13


def test_mask_matches_brute_force_and_offsets():
    h, w = 7, 9
    for size, shape in [(2, "circle"), (2.5, "circle"), (3, "square"), (0, "circle")]:
        m = make_neighborhood_mask(h, w, size, shape)
        ref = torch.zeros(h, w, h, w, dtype=torch.bool)
        for i in range(h):
            for j in range(w):
                for u in range(h):
                    for v in range(w):
                        d = math.hypot(i - u, j - v) if shape == "circle" else max(abs(i - u), abs(j - v))
                        ref[i, j, u, v] = d <= size
        assert torch.equal(m, ref)
        off = neighborhood_offsets(size, shape)
        assert torch.equal(torch.unique(offsets_from_mask(m), dim=0), torch.unique(off, dim=0))


def test_unrestricted_and_errors():
    m = make_neighborhood_mask(4, 5, None)
    assert bool(m.all())
    assert neighborhood_offsets(None, "circle", 4, 5).shape == (7 * 9, 2)
    with pytest.raises(ValueError, match="shape"):
        make_neighborhood_mask(4, 4, 3, "diamond")
    with pytest.raises(ValueError, match="size"):
        neighborhood_offsets(-1)
    bad = make_neighborhood_mask(6, 6, 1).clone()
    bad[0, 0, 3, 3] = True  # no longer a sliding window
    with pytest.raises(ValueError, match="translation invariant"):
        offsets_from_mask(bad)
