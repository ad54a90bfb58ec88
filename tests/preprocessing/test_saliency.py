"""PCA saliency masks: sign anchoring, the reference's PCA recipe, patch-centre upsampling."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dinotracker.preprocessing.saliency import nearest_patch_index, saliency_component, saliency_masks


def _blob_video(t=3, c=8, h=9, w=12, seed=0):
    """Border/background tokens near one direction, a central blob near another."""
    g = torch.Generator().manual_seed(seed)
    fg_vec, bg_vec = torch.randn(c, generator=g), torch.randn(c, generator=g)
    feats = bg_vec.view(1, c, 1, 1).repeat(t, 1, h, w) + 0.05 * torch.randn(t, c, h, w, generator=g)
    feats[:, :, 3:6, 4:8] = fg_vec.view(1, c, 1, 1) + 0.05 * torch.randn(t, c, 3, 4, generator=g)
    blob = torch.zeros(t, h, w, dtype=torch.bool)
    blob[:, 3:6, 4:8] = True
    return feats, blob


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sign_anchored_blob_is_foreground(seed):
    feats, blob = _blob_video(seed=seed)
    t, _, h, w = feats.shape
    for sign in (1.0, -1.0):  # either orientation of component 0: the central blob is foreground
        comp = saliency_component(sign * feats)
        m = saliency_masks(sign * feats, (h * 4, w * 4), patch=4, stride=4)
        assert m.shape == (t, h * 4, w * 4) and m.dtype == torch.bool
        assert torch.equal(m[:, 2::4, 2::4], blob)  # pixel at each patch centre = that patch's label
        assert not m[:, 0].any() and not m[:, -1].any() and not m[:, :, 0].any() and not m[:, :, -1].any()
        assert comp.min() == 0 and comp.max() == 1


def test_component_follows_reference_recipe():
    """Component 0 equals the projection of the jointly L2-normalised tokens on the top principal direction
    (computed here with a full SVD of the centred tokens), min-max normalised, up to sign."""
    feats, _ = _blob_video(t=2, c=6, seed=3)
    x = F.normalize(feats.permute(0, 2, 3, 1).reshape(-1, 6), dim=-1).double()
    _, _, vt = torch.linalg.svd(x - x.mean(0), full_matrices=False)
    ref = (x @ vt[0]).reshape(2, 9, 12)
    ref = (ref - ref.min()) / (ref.max() - ref.min())
    got = saliency_component(feats).double()
    assert min((got - ref).abs().max(), (got - (1 - ref)).abs().max()) < 1e-4


def test_seeded_and_global_rng_untouched():
    feats, _ = _blob_video()
    state = torch.random.get_rng_state()
    a = saliency_component(feats, seed=5)
    assert torch.equal(torch.random.get_rng_state(), state)
    torch.testing.assert_close(saliency_component(feats, seed=5), a, rtol=0, atol=0)


def test_nearest_patch_centre_upsampling_brute_force():
    for n_pix, patch, stride in ((28, 14, 7), (476, 14, 7), (32, 16, 8), (20, 4, 4)):
        n = 1 + (n_pix - patch) // stride
        idx = nearest_patch_index(n_pix, n, patch, stride)
        for i in range(n_pix):
            dists = [abs(i + 0.5 - (stride * k + patch / 2)) for k in range(n)]
            assert idx[i] == dists.index(min(dists)), (n_pix, patch, stride, i)
    # stride 7, patch 14 (centres 7, 14, 21): pixel 10 (centre 10.5) ties between 7 and 14 -> the lower patch
    idx = nearest_patch_index(28, 3, 14, 7)
    assert idx[:11].eq(0).all() and idx[11:18].eq(1).all() and idx[18:].eq(2).all()


def test_threshold_and_geometry_errors():
    feats, _ = _blob_video()
    with pytest.raises(ValueError, match="threshold"):
        saliency_masks(feats, (36, 48), 4, 4, threshold=1.5)
    with pytest.raises(ValueError, match="patch grid"):
        saliency_masks(feats, (40, 48), 4, 4)
    # a lower threshold can only shrink the foreground
    lo, hi = saliency_masks(feats, (36, 48), 4, 4, 0.3), saliency_masks(feats, (36, 48), 4, 4, 0.6)
    assert (lo <= hi).all()
