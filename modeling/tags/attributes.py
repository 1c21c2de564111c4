"""Attribute tags computed from the pixels, vectorised over a decoded uint8 batch (CPU or GPU).

Every score is in [0, 1] and is computed on the same centre crop the classifier sees, pooled 4×4
(224 -> 56 px; colour statistics do not need more):

===============  =================================================================================
name             score
===============  =================================================================================
black … gray     the 11 basic colour terms (Berlin & Kay): the share of pixels whose nearest colour,
                 in CIELAB (D65), is that named colour of CSS Color Level 4 (black #000000, white
                 #FFFFFF, red #FF0000, green #008000, yellow #FFFF00, blue #0000FF, brown #A52A2A,
                 purple #800080, pink #FFC0CB, orange #FFA500, gray #808080); they sum to 1
bright           mean CIELAB lightness L* / 100
dark             share of pixels with L* < 25
vivid            mean HSV saturation
pale             share of pixels with L* > 70 and chroma C*ab < 20 (light, washed-out)
warm             share of pixels that are chromatic (C*ab >= 15) with a hue angle h_ab in [340°, 360°) or
                 [0°, 100°) (crimson, red, orange, most yellows; sRGB red is at 40°)
cold             share of chromatic pixels with h_ab in [130°, 320°) (green, cyan, blue; sRGB blue is at 306°)
contrast         RMS contrast: 2 × the standard deviation of luminance Y (in [0, 1]), clipped to 1
colorful         Hasler & Süsstrunk (2003) colourfulness M (0..255 scale) / 150, clipped to 1
                 (M ≈ 15 "slightly", 59 "quite", 109 "extremely" colourful)
detailed         share of pixels whose luminance gradient (Sobel, 56 px) exceeds 0.1
===============  =================================================================================
"""

from __future__ import annotations

COLOUR_NAMES = ("black", "white", "red", "green", "yellow", "blue", "brown", "purple", "pink", "orange", "gray")
_PALETTE_RGB = ((0, 0, 0), (255, 255, 255), (255, 0, 0), (0, 128, 0), (255, 255, 0), (0, 0, 255),
                (165, 42, 42), (128, 0, 128), (255, 192, 203), (255, 165, 0), (128, 128, 128))
ATTRIBUTE_NAMES = COLOUR_NAMES + ("bright", "dark", "vivid", "pale", "warm", "cold", "contrast", "colorful", "detailed")
POOL = 4


def _srgb_to_lab(rgb):
    """[..., 3] sRGB in [0, 1] -> [..., 3] CIELAB (D65)."""
    import torch

    linear = torch.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    m = torch.tensor([[0.4124564, 0.3575761, 0.1804375],
                      [0.2126729, 0.7151522, 0.0721750],
                      [0.0193339, 0.1191920, 0.9503041]], dtype=rgb.dtype, device=rgb.device)
    xyz = linear @ m.T / torch.tensor([0.95047, 1.0, 1.08883], dtype=rgb.dtype, device=rgb.device)
    eps = 216 / 24389
    f = torch.where(xyz > eps, xyz.clamp_min(1e-12) ** (1 / 3), (24389 / 27 * xyz + 16) / 116)
    return torch.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], dim=-1)


def pixel_attributes(images):
    """uint8 [B, 3, H, W] (any device) -> float32 [B, len(ATTRIBUTE_NAMES)] in [0, 1]."""
    import torch
    import torch.nn.functional as F

    x = images.float().div_(255.0)
    if x.shape[-1] >= 2 * POOL and x.shape[-2] >= 2 * POOL:
        x = F.avg_pool2d(x, POOL)
    b = x.shape[0]
    rgb = x.permute(0, 2, 3, 1).reshape(b, -1, 3)  # [B, P, 3]
    lab = _srgb_to_lab(rgb)
    palette = _srgb_to_lab(torch.tensor(_PALETTE_RGB, dtype=torch.float32, device=x.device) / 255.0)
    nearest = torch.cdist(lab, palette.expand(b, -1, -1)).argmin(-1)  # [B, P]
    colours = F.one_hot(nearest, len(COLOUR_NAMES)).float().mean(1)

    lightness, a, bb = lab.unbind(-1)
    chroma = torch.sqrt(a * a + bb * bb)
    hue = torch.rad2deg(torch.atan2(bb, a))  # (-180, 180]
    chromatic = chroma >= 15
    hue360 = torch.remainder(hue, 360)
    warm = (chromatic & ((hue360 >= 340) | (hue360 < 100))).float().mean(1)
    cold = (chromatic & (hue360 >= 130) & (hue360 < 320)).float().mean(1)
    bright = (lightness.mean(1) / 100).clamp(0, 1)
    dark = (lightness < 25).float().mean(1)
    cmax, cmin = rgb.max(-1).values, rgb.min(-1).values
    vivid = torch.where(cmax > 0, (cmax - cmin) / cmax.clamp_min(1e-6), torch.zeros_like(cmax)).mean(1)
    pale = ((lightness > 70) & (chroma < 20)).float().mean(1)
    luminance = rgb @ torch.tensor([0.2126, 0.7152, 0.0722], device=x.device)
    contrast = (2 * luminance.std(1, unbiased=False)).clamp(0, 1)
    r, g, bl = (rgb * 255).unbind(-1)
    rg, yb = r - g, 0.5 * (r + g) - bl
    m = torch.sqrt(rg.var(1, unbiased=False) + yb.var(1, unbiased=False)) + 0.3 * torch.sqrt(
        rg.mean(1) ** 2 + yb.mean(1) ** 2)
    colorful = (m / 150).clamp(0, 1)
    lum = luminance.reshape(b, 1, x.shape[-2], x.shape[-1])
    sobel = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], device=x.device) / 4
    kernel = torch.stack([sobel, sobel.T]).unsqueeze(1)
    grad = F.conv2d(F.pad(lum, (1, 1, 1, 1), mode="replicate"), kernel)
    detailed = (grad.pow(2).sum(1).sqrt() > 0.1).float().flatten(1).mean(1)
    out = torch.cat([colours, torch.stack([bright, dark, vivid, pale, warm, cold, contrast, colorful, detailed], 1)], 1)
    return out.clamp_(0, 1)
