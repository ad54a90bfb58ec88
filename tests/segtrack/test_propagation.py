"""propagate: dense (notebook) and gather agree with each other and with a per-query brute force."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dinotracker.segtrack.neighbourhood import make_neighborhood_mask, neighborhood_offsets
from dinotracker.segtrack.propagation import propagate


def brute_force(cur, ctx, probs, size, shape, topk, temperature):
    """One query at a time: list the window candidates of every context frame, keep scores >= k-th."""
    h, w, _ = cur.shape
    t, m = ctx.shape[0], probs.shape[-1]
    out = torch.zeros(h, w, m, dtype=torch.float64)
    for i in range(h):
        for j in range(w):
            cands = []
            for tau in range(t):
                for u in range(h):
                    for v in range(w):
                        d = math.hypot(i - u, j - v) if shape == "circle" else max(abs(i - u), abs(j - v))
                        if d <= size:
                            cands.append((float(cur[i, j].double() @ ctx[tau, u, v].double()), tau, u, v))
            kth = sorted((c[0] for c in cands), reverse=True)[topk - 1]
            win = [c for c in cands if c[0] >= kth]
            e = torch.tensor([c[0] / temperature for c in win], dtype=torch.float64).softmax(0)
            out[i, j] = sum(e[n] * probs[c[1], c[2], c[3]].double() for n, c in enumerate(win))
    return out


def rand_case(h, w, c, t, m, seed):
    g = torch.Generator().manual_seed(seed)
    cur = F.normalize(torch.randn(h, w, c, generator=g), dim=-1)
    ctx = F.normalize(torch.randn(t, h, w, c, generator=g), dim=-1)
    probs = torch.softmax(3 * torch.randn(t, h, w, m, generator=g), -1)
    probs[0] = F.one_hot(torch.randint(0, m, (h, w), generator=g), m).float()  # frame 0: hard labels
    return cur, ctx, probs


@pytest.mark.parametrize(
    "h,w,c,t,size,shape,topk,tile",
    [
        (6, 7, 8, 1, 2, "circle", 5, 3),
        (9, 5, 16, 3, 3, "square", 5, 4),
        (11, 13, 12, 4, 12, "circle", 5, 16),  # the window covers the whole grid
        (12, 10, 8, 2, 2.5, "circle", 7, 5),
    ],
)
def test_gather_equals_dense_and_brute_force(h, w, c, t, size, shape, topk, tile):
    cur, ctx, probs = rand_case(h, w, c, t, 3, seed=h * w + t)
    dense = propagate(cur, ctx, probs, make_neighborhood_mask(h, w, size, shape), topk, 0.2, method="dense")
    gather = propagate(
        cur, ctx, probs, neighborhood_offsets(size, shape), topk, 0.2, method="gather", tile=tile
    )
    ref = brute_force(cur, ctx, probs, size, shape, topk, 0.2)
    assert dense.shape == gather.shape == (h, w, 3)
    torch.testing.assert_close(gather, dense, rtol=0, atol=1e-6)
    torch.testing.assert_close(gather.double(), ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(gather.sum(-1), torch.ones(h, w), rtol=0, atol=1e-6)


def test_ties_keep_every_candidate_at_the_kth_value():
    """Features from a 3-vector codebook (exact dot products 0/1/0.25): many exact ties at the k-th value.
    Both methods must keep all tied winners (more than k) with equal weights."""
    g = torch.Generator().manual_seed(0)
    h, w, t, m = 8, 9, 3, 3
    book = torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0], [0.25, 0, 0.5, 0.8291561975888499]])
    book = F.normalize(book, dim=-1)
    cur = book[torch.randint(0, 3, (h, w), generator=g)]
    ctx = book[torch.randint(0, 3, (t, h, w), generator=g)]
    probs = F.one_hot(torch.randint(0, m, (t, h, w), generator=g), m).float()
    for size, shape in [(2, "circle"), (1, "square")]:
        dense = propagate(cur, ctx, probs, (size, shape), 5, 0.2, method="dense")
        gather = propagate(cur, ctx, probs, (size, shape), 5, 0.2, method="gather", tile=3)
        torch.testing.assert_close(gather, dense, rtol=0, atol=1e-6)
        torch.testing.assert_close(
            gather.double(), brute_force(cur, ctx, probs, size, shape, 5, 0.2), rtol=0, atol=1e-6
        )


def test_all_tied_gives_window_average_by_hand():
    """Identical features everywhere: every candidate ties, so p_i = mean label over the whole window
    (all context frames). Query (0, 0), square r=1, t=1: window = 2 x 2 corner cells."""
    h, w, m = 4, 5, 3
    cur = torch.zeros(h, w, 2)
    cur[..., 0] = 1
    ctx = cur[None].clone()
    labels = torch.tensor([[0, 1, 2, 0, 0], [2, 2, 1, 0, 0], [0, 0, 0, 0, 0], [0, 0, 0, 0, 1]])
    probs = F.one_hot(labels, m).float()[None]
    for method in ("dense", "gather"):
        out = propagate(cur, ctx, probs, (1, "square"), 2, 0.2, method=method)
        # cells (0,0)=0, (0,1)=1, (1,0)=2, (1,1)=2 -> [1/4, 1/4, 2/4]
        torch.testing.assert_close(out[0, 0], torch.tensor([0.25, 0.25, 0.5]))
        # interior (1, 1): 9 cells (0,0)=0 (0,1)=1 (0,2)=2 (1,0)=2 (1,1)=2 (1,2)=1 (2,*)=0 -> [4, 2, 3]/9
        torch.testing.assert_close(out[1, 1], torch.tensor([4, 2, 3]) / 9.0)


def test_joint_topk_over_frames():
    """k=1: the single best match wins even when it lies in a later context frame."""
    h, w = 3, 3
    cur = torch.zeros(h, w, 2)
    cur[..., 0] = 1
    ctx = torch.zeros(2, h, w, 2)
    ctx[..., 1] = 1  # orthogonal everywhere ...
    ctx[1, 1, 1] = torch.tensor([1.0, 0.0])  # ... but one perfect match in frame 1
    probs = torch.zeros(2, h, w, 2)
    probs[..., 0] = 1
    probs[1, 1, 1] = torch.tensor([0.0, 1.0])
    for method in ("dense", "gather"):
        out = propagate(cur, ctx, probs, (1, "square"), 1, 0.2, method=method)
        torch.testing.assert_close(out[1, 1], torch.tensor([0.0, 1.0]))


def test_errors():
    cur, ctx, probs = rand_case(5, 5, 4, 1, 2, 0)
    for method in ("dense", "gather"):
        with pytest.raises(ValueError, match="candidates"):
            propagate(cur, ctx, probs, (0, "circle"), 5, 0.2, method=method)  # 1 candidate < k
        with pytest.raises(ValueError, match="shape mismatch"):
            propagate(cur, ctx[:, :4], probs, (2, "circle"), 1, 0.2, method=method)
        with pytest.raises(ValueError, match="temperature"):
            propagate(cur, ctx, probs, (2, "circle"), 1, 0.0, method=method)
    with pytest.raises(ValueError, match="method"):
        propagate(cur, ctx, probs, (2, "circle"), 1, 0.2, method="sparse")


def test_gather_accepts_a_notebook_mask():
    cur, ctx, probs = rand_case(7, 8, 6, 2, 3, 4)
    mask = make_neighborhood_mask(7, 8, 3, "circle")
    torch.testing.assert_close(
        propagate(cur, ctx, probs, mask, 5, 0.2, method="gather"),
        propagate(cur, ctx, probs, mask, 5, 0.2, method="dense"),
        rtol=0,
        atol=1e-6,
    )
