"""Exact diversity of a group of ShapesWorld runs from their per-run ``mode_id``
(src/backbones/shapes_metrics.py: the world class a run renders as, -1 for none).

``mode_id`` is categorical: its mean means nothing (modes 12, 15, 14, 13 are four different
objects, not "13.5"), so a group reports the per-seed list, the number of distinct modes and
the entropy of their empirical distribution instead.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable

# Per-run metrics whose values are labels, not quantities: reported as per-seed lists and
# distinct counts, never averaged.
CATEGORICAL = ("mode_id", "nearest_class")
NO_MODE = -1  # shapes_metrics: no view within the precision threshold of any class


def _modes(mode_ids: Iterable[float | int | None]) -> list[int]:
    """The runs that landed on a class: -1 ("none"), None and NaN are left out."""
    return [int(m) for m in mode_ids
            if m is not None and not (isinstance(m, float) and math.isnan(m)) and int(m) != NO_MODE]


def distinct_modes(mode_ids: Iterable[float | int | None]) -> int:
    """How many different classes the runs landed on (-1 = no class is not a mode)."""
    return len(set(_modes(mode_ids)))


def mode_entropy(mode_ids: Iterable[float | int | None]) -> float:
    """Shannon entropy in bits of the classes the runs landed on (runs with no class left
    out): 0 when every seed gives the same object, log2(k) for k seeds on k different ones;
    NaN when no run landed on a class."""
    counts = Counter(_modes(mode_ids))
    n = sum(counts.values())
    if n == 0:
        return math.nan
    return max(0.0, -sum(c / n * math.log2(c / n) for c in counts.values()))
