"""Inception metrics: FID / KID of a group's renders against samples of the prior, and IQ /
IV / IG of each run (esd Eq. 10-11).

The feature extractor is any callable uint8 (N, 3, H, W) -> (features (N, D), logits (N, C))
(src/metrics/models.py: torch-fidelity's InceptionV3, or random test weights); FID and KID
are torch-fidelity's own formulas on those features:
- FID = |mu_1 - mu_2|^2 + tr(S_1 + S_2 - 2 (S_1 S_2)^(1/2)); with fewer samples than feature
  dimensions (2048) the covariances are singular and FID is biased upwards: compare FIDs
  computed with the same numbers of renders and prior samples only.
- KID: the unbiased MMD^2 with the cubic polynomial kernel, mean and std over random
  subsets (torch-fidelity's 100 subsets of size min(1000, n_1, n_2)), drawn from the METRICS
  stream (src/rng.py).
- IQ = E_c H[p_cls(. | render_c)], IV = H[E_c p_cls(. | render_c)], IG = (IV - IQ) / IQ,
  entropies in nats, p_cls the softmax of the classifier's logits over the run's views.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from src import rng

KID_SUBSETS = 100  # torch-fidelity's default kid_subsets
KID_SUBSET_SIZE = 1000  # torch-fidelity's default kid_subset_size (capped by the set sizes)


@torch.no_grad()
def inception_outputs(extractor, images: np.ndarray | Tensor, chunk: int = 32,
                      device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
    """(features (N, D), logits (N, C)) float64 on the CPU of images (N, H, W, 3): uint8, or float
    in [0, 1]; each chunk goes to ``device`` (the extractor's) first when given."""
    x = torch.as_tensor(images)
    if x.dtype != torch.uint8:
        x = (x.float().clamp(0, 1) * 255).round().to(torch.uint8)
    x = x.permute(0, 3, 1, 2).contiguous()
    feats, logits = [], []
    for i in range(0, len(x), chunk):
        f, lg = extractor(x[i : i + chunk] if device is None else x[i : i + chunk].to(device))
        feats.append(f.double().cpu())
        logits.append(lg.double().cpu())
    return torch.cat(feats), torch.cat(logits)


def fid(features_1: Tensor, features_2: Tensor) -> float:
    """Fréchet distance between two feature sets (N, D), (M, D) (torch-fidelity's formula)."""
    from torch_fidelity.metric_fid import (
        KEY_METRIC_FID,
        fid_features_to_statistics,
        fid_statistics_to_metric,
    )

    s1, s2 = fid_features_to_statistics(features_1.double()), fid_features_to_statistics(features_2.double())
    return float(fid_statistics_to_metric(s1, s2, verbose=False)[KEY_METRIC_FID])


def kid(features_1: Tensor, features_2: Tensor, subsets: int = KID_SUBSETS) -> tuple[float, float]:
    """(mean, std) of the kernel inception distance over random subsets (torch-fidelity)."""
    from torch_fidelity.metric_kid import (
        KEY_METRIC_KID_MEAN,
        KEY_METRIC_KID_STD,
        kid_features_to_metric,
    )

    size = min(KID_SUBSET_SIZE, len(features_1), len(features_2))
    if size < 2:
        return math.nan, math.nan
    out = kid_features_to_metric(features_1.double(), features_2.double(), kid_subsets=subsets,
                                 kid_subset_size=size, verbose=False,
                                 rng_seed=rng.derive(0, rng.Stream.METRICS, 4) % 2**32)
    return float(out[KEY_METRIC_KID_MEAN]), float(out[KEY_METRIC_KID_STD])


def entropy(p: Tensor) -> Tensor:
    """Shannon entropy in nats along the last axis (0 log 0 = 0)."""
    return -(p * torch.log(p.clamp_min(1e-30))).sum(-1)


def inception_gain(logits: Tensor) -> dict[str, float]:
    """IQ, IV, IG (esd Eq. 10-11) of one run from its views' classifier logits (V, C)."""
    p = torch.softmax(logits.double(), -1)
    iq = float(entropy(p).mean())
    iv = float(entropy(p.mean(0)))
    return {"iq": iq, "iv": iv, "ig": (iv - iq) / iq if iq > 0 else math.nan}
