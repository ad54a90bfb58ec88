"""ViT maths: extracted facets equal an independent explicit re-computation and the model's own forward."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dinotracker.backbones import DinoV2, DinoV3, build_backbone
from dinotracker.geometry import patch_grid_size

MEAN = torch.tensor((0.485, 0.456, 0.406)).view(1, 3, 1, 1)
STD = torch.tensor((0.229, 0.224, 0.225)).view(1, 3, 1, 1)
TINY2 = dict(depth=3, embed_dim=32, num_heads=4, img_size=56)
TINY3 = dict(depth=3, embed_dim=32, num_heads=2)


def _tiny(name, **kw):
    tiny = TINY2 if name.startswith("dinov2") else TINY3
    return build_backbone(name, source="random", **{**tiny, **kw})


# ---------------------------------------------------------------- independent reference (explicit maths)
def _ln(x, mod):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + mod.eps) * mod.weight + mod.bias


def _rope_complex(t, y, x, periods):
    """Rotate pairs (d, d + D/2) of t [N, D] by angle 2*pi*pos/period, with pos = y for the first D/4 pairs,
    x for the next D/4, as complex multiplication."""
    half = t.shape[-1] // 2
    ang = torch.cat([2 * math.pi * y[:, None] / periods[None], 2 * math.pi * x[:, None] / periods[None]], 1)
    z = torch.complex(t[:, :half].double(), t[:, half:].double()) * torch.polar(
        torch.ones_like(ang).double(), ang.double()
    )
    return torch.cat([z.real, z.imag], 1).float()


def naive_blocks(model, images):
    """Every block's tokens and (q, k, v) for a [1,3,H,W] image, from the parameters with explicit loops."""
    p, s, c = model.patch_size, model.stride, model.embed_dim
    x = (images - MEAN) / STD
    cols = F.unfold(x, p, stride=s)[0].T  # [L, 3*p*p], row-major patches
    tok = cols @ model.patch_embed.proj.weight.reshape(c, -1).T + model.patch_embed.proj.bias
    gh, gw = patch_grid_size(tuple(images.shape[-2:]), p, s)
    rope = None
    if isinstance(model, DinoV2):
        tok = torch.cat([model.cls_token[0], tok]) + model.interpolate_pos_encoding(gh, gw)[0]
        if model.num_register_tokens:
            tok = torch.cat([tok[:1], model.register_tokens[0], tok[1:]])
    else:
        h_img, w_img = images.shape[-2:]
        ii, jj = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
        y = 2 * (s * ii.flatten() + p / 2) / h_img - 1
        xx = 2 * (s * jj.flatten() + p / 2) / w_img - 1
        rope = (y.float(), xx.float(), model.rope_embed.periods)
        tok = torch.cat([model.cls_token[0], model.storage_tokens[0], tok])
    n_pre = model.num_prefix_tokens
    outs, qkvs = [], []
    for blk in model.blocks:
        h = _ln(tok, blk.norm1)
        bias = blk.attn.qkv.bias
        if hasattr(blk.attn.qkv, "bias_mask"):
            bias = bias * blk.attn.qkv.bias_mask
        qkv = h @ blk.attn.qkv.weight.T + bias
        q, k, v = qkv.split(c, -1)
        qkvs.append((q, k, v))
        heads = blk.attn.num_heads
        hd = c // heads
        att_out = []
        for i in range(heads):
            qi, ki, vi = (t[:, i * hd : (i + 1) * hd] for t in (q, k, v))
            if rope is not None:
                qi = torch.cat([qi[:n_pre], _rope_complex(qi[n_pre:], *rope)])
                ki = torch.cat([ki[:n_pre], _rope_complex(ki[n_pre:], *rope)])
            att_out.append(torch.softmax(qi @ ki.T / math.sqrt(hd), -1) @ vi)
        a = torch.cat(att_out, 1) @ blk.attn.proj.weight.T + blk.attn.proj.bias
        tok = tok + a * blk.ls1.gamma
        h2 = _ln(tok, blk.norm2)
        mlp = blk.mlp
        if hasattr(mlp, "fc1"):
            m = F.gelu(h2 @ mlp.fc1.weight.T + mlp.fc1.bias) @ mlp.fc2.weight.T + mlp.fc2.bias
        elif hasattr(mlp, "w12"):
            gate, up = (h2 @ mlp.w12.weight.T + mlp.w12.bias).chunk(2, -1)
            m = (gate * torch.sigmoid(gate) * up) @ mlp.w3.weight.T + mlp.w3.bias
        else:
            gate, up = h2 @ mlp.w1.weight.T + mlp.w1.bias, h2 @ mlp.w2.weight.T + mlp.w2.bias
            m = (gate * torch.sigmoid(gate) * up) @ mlp.w3.weight.T + mlp.w3.bias
        tok = tok + m * blk.ls2.gamma
        outs.append(tok)
    return outs, qkvs, (gh, gw)


def _to_grid(t, n_pre, gh, gw):
    return t[n_pre:].T.reshape(-1, gh, gw)


CASES = [
    ("dinov2_vits14", 14, (42, 56)),
    ("dinov2_vits14", 7, (42, 56)),
    ("dinov2_vits14_reg", 7, (56, 70)),
    ("dinov2_vitg14", 7, (28, 42)),
    ("dinov3_vits16", 16, (32, 48)),
    ("dinov3_vits16", 8, (48, 32)),
    ("dinov3_vits16plus", 8, (32, 48)),
]


@pytest.mark.parametrize("name,stride,hw", CASES)
def test_facets_equal_explicit_reference(name, stride, hw):
    model = _tiny(name, stride=stride)
    img = torch.rand(1, 3, *hw, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        outs, qkvs, (gh, gw) = naive_blocks(model, img)
        for facet in ("tokens", "queries", "keys", "values"):
            got = model.extract(img, [0, 2, -2], facet)
            assert set(got) == {0, 2, -2}
            for layer, idx in ((0, 0), (2, 2), (-2, 1)):
                ref = (
                    outs[idx] if facet == "tokens" else qkvs[idx][("queries", "keys", "values").index(facet)]
                )
                ref = _to_grid(ref, model.num_prefix_tokens, gh, gw)
                assert got[layer].shape == (1, model.embed_dim, gh, gw)
                torch.testing.assert_close(got[layer][0], ref, atol=2e-5, rtol=1e-4, msg=f"{facet} {layer}")


def test_dinov3_keys_have_no_bias():
    """The key third of the DINOv3 qkv bias is masked out (mask_k_bias), whatever the stored bias holds."""
    model = _tiny("dinov3_vits16")
    with torch.no_grad():
        model.blocks[0].attn.qkv.bias.fill_(1.0)
    qkv = model.blocks[0].attn.qkv
    x = torch.zeros(1, 2, 32)
    out = qkv(x)[0, 0]
    assert torch.equal(out[32:64], torch.zeros(32)) and torch.equal(out[:32], torch.ones(32))


def _hooked(model, images):
    outs, qkvs = {}, {}
    hooks = [
        b.register_forward_hook(lambda m, i, o, k=k: outs.__setitem__(k, o))
        for k, b in enumerate(model.blocks)
    ]
    hooks += [
        b.attn.qkv.register_forward_hook(lambda m, i, o, k=k: qkvs.__setitem__(k, o))
        for k, b in enumerate(model.blocks)
    ]
    model(images)  # the plain full forward
    for h in hooks:
        h.remove()
    return outs, qkvs


@pytest.mark.parametrize("name,stride", [("dinov2_vits14_reg", 7), ("dinov3_vits16", 8)])
def test_facets_equal_hooked_full_forward(name, stride):
    model = _tiny(name, stride=stride)
    img = torch.rand(2, 3, 48 if name.startswith("dinov3") else 42, 64 if name.startswith("dinov3") else 56)
    gh, gw = model.grid_size(img.shape[-2:])
    with torch.no_grad():
        outs, qkvs = _hooked(model, img)
        p, c = model.num_prefix_tokens, model.embed_dim
        for k, facet in enumerate(("tokens", "queries", "keys", "values")):
            got = model.extract(img, [1, -1], facet)
            for layer, idx in ((1, 1), (-1, 2)):
                ref = outs[idx] if facet == "tokens" else qkvs[idx].reshape(2, -1, 3, c)[:, :, k - 1]
                ref = ref[:, p:].transpose(1, 2).reshape(2, c, gh, gw)
                torch.testing.assert_close(got[layer], ref)


def test_only_needed_blocks_run_and_nothing_is_kept():
    model = _tiny("dinov2_vits14")
    calls = []
    for k, b in enumerate(model.blocks):
        b.register_forward_hook(lambda m, i, o, k=k: calls.append(k))
    out = model.extract(torch.rand(1, 3, 28, 28), [0])
    assert calls == [0] and list(out) == [0]
    calls.clear()
    model.extract(torch.rand(1, 3, 28, 28), [1, 0], facet="values")
    assert calls == [0, 1]


def test_final_norm_not_applied():
    model = _tiny("dinov3_vits16")
    img = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        normed = model(img)[:, model.num_prefix_tokens :].transpose(1, 2).reshape(1, 32, 2, 2)
        raw = model.extract(img, [-1])[-1]
        assert not torch.allclose(raw, normed)
        torch.testing.assert_close(
            model.norm(raw.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(raw.shape), normed
        )


def _cubic_weights(t, a=-0.75):
    """Keys' cubic convolution kernel weights for the 4 taps around a fractional offset t."""

    def k(d):
        d = abs(d)
        if d <= 1:
            return (a + 2) * d**3 - (a + 3) * d**2 + 1
        if d < 2:
            return a * d**3 - 5 * a * d**2 + 8 * a * d - 4 * a
        return 0.0

    return [k(t + 1), k(t), k(1 - t), k(2 - t)]


def _bicubic_reference(grid, out_hw, scale):
    """Loop implementation of bicubic resampling with PyTorch's scale-factor coordinate map
    src = (dst + 0.5) / scale - 0.5 and border clamping (align_corners=False, no antialias)."""
    c, m, _ = grid.shape
    out = torch.zeros(c, *out_hw, dtype=torch.float64)
    g = grid.double()
    for oy in range(out_hw[0]):
        sy = (oy + 0.5) / scale[0] - 0.5
        y0 = math.floor(sy)
        wy = _cubic_weights(sy - y0)
        for ox in range(out_hw[1]):
            sx = (ox + 0.5) / scale[1] - 0.5
            x0 = math.floor(sx)
            wx = _cubic_weights(sx - x0)
            acc = torch.zeros(c, dtype=torch.float64)
            for i in range(4):
                yy = min(max(y0 - 1 + i, 0), m - 1)
                for j in range(4):
                    xx = min(max(x0 - 1 + j, 0), m - 1)
                    acc += wy[i] * wx[j] * g[:, yy, xx]
            out[:, oy, ox] = acc
    return out.float()


def test_position_interpolation_identity_and_reference_kludge():
    model = _tiny("dinov2_vits14")  # 56 px -> a 4x4 pretrained grid
    assert model.interpolate_pos_encoding(4, 4) is model.pos_embed  # native stride and size: identity
    model.set_stride(7)
    gh, gw = model.grid_size((42, 70))
    assert (gh, gw) == (5, 9)
    pos = model.interpolate_pos_encoding(gh, gw)
    assert pos.shape == (1, 1 + gh * gw, 32) and torch.equal(pos[:, 0], model.pos_embed[:, 0])
    grid = model.pos_embed[0, 1:].T.reshape(32, 4, 4)
    ref = _bicubic_reference(grid, (gh, gw), ((gh + 0.1) / 4, (gw + 0.1) / 4))  # the reference's +0.1 kludge
    torch.testing.assert_close(pos[0, 1:].T.reshape(32, gh, gw), ref, atol=1e-5, rtol=1e-5)


def test_dinov3_rope_native_coordinates_match_official_formula():
    """At the native stride the patch-centre coordinates are the official (k + 0.5) / n mapped to [-1, 1]."""
    rope = DinoV3(embed_dim=32, depth=1, num_heads=2).rope_embed
    sin, cos = rope(3, 5, 16, 16)
    ys = 2 * (torch.arange(3) + 0.5) / 3 - 1
    xs = 2 * (torch.arange(5) + 0.5) / 5 - 1
    y, x = torch.meshgrid(ys, xs, indexing="ij")
    periods = 100.0 ** (2 * torch.arange(4) / 8)  # head_dim 16 -> 4 periods, base 100
    ang = torch.cat([2 * math.pi * y.reshape(-1, 1) / periods, 2 * math.pi * x.reshape(-1, 1) / periods], 1)
    torch.testing.assert_close(sin, torch.sin(ang).repeat(1, 2))
    torch.testing.assert_close(cos, torch.cos(ang).repeat(1, 2))
    torch.testing.assert_close(rope.periods, periods)


@pytest.mark.parametrize("name", ["dinov2_vits14_reg", "dinov3_vits16"])
@pytest.mark.parametrize("facet", ["tokens", "keys"])
def test_split_forward_equals_extract(name, facet):
    """tokens_before(k) + extract_from(k) is extract split at block k (LoRA's cached frozen prefix)."""
    model = _tiny(name, stride=7 if name.startswith("dinov2") else 8)
    p = model.patch_size
    x = torch.rand(2, 3, 4 * p, 5 * p, generator=torch.Generator().manual_seed(0))
    ref = model.extract(x, [1, 2], facet)
    for k in (0, 1):
        tokens, grid = model.tokens_before(x, k)
        out = model.extract_from(tokens, grid, k, [1, 2], facet)
        assert all(torch.equal(out[i], ref[i]) for i in (1, 2))
    with pytest.raises(ValueError, match="before block 2"):
        model.extract_from(*model.tokens_before(x, 2), 2, [1], facet)
