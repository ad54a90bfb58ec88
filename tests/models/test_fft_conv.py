"""The FFT-tiled weight gradient (model.fast_conv) against brute force; through Delta-DINO against the plain
path in tests/training/test_fast_step.py."""

from __future__ import annotations

import pytest
import torch

from dinotracker.models import fft_conv


def brute_force_weight_grad(x: torch.Tensor, gy: torch.Tensor, k: int) -> torch.Tensor:
    """dW[o, i, u, v] = sum_{b,y,x} gy[b,o,y,x] x[b,i,y+u,x+v], in float64, one lag at a time."""
    h, w = gy.shape[-2:]
    x, gy = x.double(), gy.double()
    out = torch.empty(gy.shape[1], x.shape[1], k, k, dtype=torch.float64)
    for u in range(k):
        for v in range(k):
            out[:, :, u, v] = torch.einsum("boyx,biyx->oi", gy, x[:, :, u:u + h, v:v + w])
    return out


@pytest.mark.parametrize("tile", fft_conv.TILES)
@pytest.mark.parametrize("shape", [(2, 3, 4, 13, 17, 5), (1, 5, 2, 8, 8, 5), (3, 2, 3, 11, 7, 3)])
def test_fft_weight_grad_equals_brute_force(tile, shape):
    """Every tile size, maps that are not a multiple of the tile (zero-padded edges), one and many tiles,
    kernels 5 and 3."""
    b, ci, co, h, w, k = shape
    g = torch.Generator().manual_seed(tile)
    x = torch.randn(b, ci, h + k - 1, w + k - 1, generator=g)
    gy = torch.randn(b, co, h, w, generator=g)
    got = fft_conv.fft_weight_grad(x, gy, k, tile)
    want = brute_force_weight_grad(x, gy, k)
    assert got.shape == (co, ci, k, k) and got.dtype == torch.float32
    assert (got.double() - want).abs().max() <= 1e-5 * want.abs().max()


def test_fft_weight_grad_refuses_shapes_of_another_convolution():
    with pytest.raises(ValueError, match="not a valid 5x5"):
        fft_conv.fft_weight_grad(torch.randn(1, 2, 12, 12), torch.randn(1, 3, 9, 8), 5, 16)


def test_plan_tile_picks_fft_for_wide_layers_and_direct_for_the_rgb_layer():
    """quick_cpu's Delta-DINO layers (7 frames of 238x427): the 64->128 and 128->256 convs and the polyphase
    dilated 256->384 conv go through FFTs, the 3->64 conv (3 input channels) stays direct; shapes only."""
    assert fft_conv.plan_tile(7, 64, 128, (119, 214), 5) in fft_conv.TILES
    assert fft_conv.plan_tile(7, 128, 256, (60, 107), 5) in fft_conv.TILES
    assert fft_conv.plan_tile(28, 256, 384, (15, 27), 5) in fft_conv.TILES
    assert fft_conv.plan_tile(7, 3, 64, (238, 427), 5) is None
    assert fft_conv.plan_tile(1, 4, 4, (6, 6), 5) is None  # tiny: the direct kernel


def test_step_floor_records_every_delta_dino_convolution():
    """experiments/bench/step_floor.py's evidence (the convolutions alone against issue 13's budget) stands on
    recording each NNPACK call of a fast-path forward; a refactor that bypasses the hook must fail loudly there,
    not report a floor of 0."""
    import sys
    from pathlib import Path

    from dinotracker.models.delta_dino import DeltaDINO, nnpack_available

    if not nnpack_available():
        pytest.skip("no NNPACK in this torch")
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "experiments" / "bench"))
    import step_floor

    delta = DeltaDINO(out_dim=8, channels=(4, 4, 4), zero_init=False)
    delta.fast_conv = True
    calls = step_floor.record_convs(delta, torch.rand(2, 3, 40, 48))
    # the padded inputs of the 4 convs (reflect pad 2; the dilated last one: pad 4, as its 2x2 polyphase batch)
    assert [(s, d) for s, _, _, d in calls] == [((2, 3, 44, 52), 1), ((2, 4, 24, 28), 1), ((2, 4, 14, 16), 1),
                                                ((2, 4, 13, 14), 2)]
    delta.fast_conv = False  # the plain path never reaches the hook
    with pytest.raises(SystemExit, match="recorded 0 NNPACK convolutions"):
        step_floor.record_convs(delta, torch.rand(2, 3, 40, 48))
