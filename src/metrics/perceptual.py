"""LPIPS-D (dsd, dive3d_sim): mean pairwise LPIPS between the runs of a group at the same cameras.

For two runs with renders a, b (V views each, the same V cameras), their distance is the mean
over views of LPIPS(a_v, b_v); LPIPS-D is the mean of that over the pairs of runs. Identical
renders give exactly 0 (LPIPS of an image with itself).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from src.metrics.pairs import mean_pairwise

# AlexNet's five stages shrink a side by 32 (its last max-pool fails below ~32 px): smaller
# renders (a 32 px ShapesWorld eval view) are upsampled bilinearly to this side first.
LPIPS_MIN_SIDE = 64


@torch.no_grad()
def lpips_distance(model, a: Tensor, b: Tensor, chunk: int = 16) -> float:
    """Mean over views of LPIPS(a_v, b_v); a, b (V, H, W, 3) in [0, 1]."""
    if a.shape != b.shape:
        raise ValueError(f"LPIPS compares renders at the same cameras: {tuple(a.shape)} vs {tuple(b.shape)}")
    def to(x: Tensor) -> Tensor:  # lpips takes (N, 3, H, W) in [-1, 1]
        x = x.permute(0, 3, 1, 2).float() * 2.0 - 1.0
        side = min(x.shape[-2:])
        if side < LPIPS_MIN_SIDE:
            k = LPIPS_MIN_SIDE / side
            x = F.interpolate(x, size=(round(x.shape[-2] * k), round(x.shape[-1] * k)), mode="bilinear",
                              align_corners=False)
        return x

    d = [model(to(a[i : i + chunk]), to(b[i : i + chunk])).flatten() for i in range(0, len(a), chunk)]
    return float(torch.cat(d).mean())


def lpips_d(model, renders: list[Tensor]) -> float:
    """LPIPS-D of a group: renders[i] (V, H, W, 3) in [0, 1] of run i; NaN below two runs."""
    return mean_pairwise(renders, lambda a, b: lpips_distance(model, a, b))
