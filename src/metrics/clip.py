"""CLIP metrics: CLIP-D (dive3d_sim) per group, CLIP distance to the prompt (esd) per run.

- CLIP-D: for two runs at the same V cameras, the mean over views of 1 - cos(E(a_v), E(b_v))
  (E the CLIP image embedding); the mean of that over the pairs of runs. 0 for identical renders.
- CLIP distance: mean over a run's views of 1 - cos(E(render_v), T(prompt)) (lower: closer to
  the prompt). ESD's table reports it as "CLIP".
"""

from __future__ import annotations

import torch
from torch import Tensor

from src.metrics.pairs import mean_pairwise


@torch.no_grad()
def clip_embeddings(model, renders: Tensor, chunk: int = 16) -> Tensor:
    """Unit image embeddings (V, E) of renders (V, H, W, 3) in [0, 1]."""
    return torch.cat([model.image_embedding(renders[i : i + chunk]) for i in range(0, len(renders), chunk)])


def cosine_distance(a: Tensor, b: Tensor) -> float:
    """Mean over rows of 1 - cos(a_v, b_v); (V, E) x2 (or (1, E) broadcast)."""
    return float((1.0 - torch.nn.functional.cosine_similarity(a, b, dim=-1)).mean())


def clip_d(embeddings: list[Tensor]) -> float:
    """CLIP-D of a group from each run's (V, E) embeddings at the same cameras."""
    return mean_pairwise(embeddings, cosine_distance)


@torch.no_grad()
def clip_distance(model, embeddings: Tensor, prompt: str) -> float:
    """A run's mean 1 - cos between its views' embeddings (V, E) and the prompt's."""
    return cosine_distance(embeddings, model.text_embedding(prompt).to(embeddings))
