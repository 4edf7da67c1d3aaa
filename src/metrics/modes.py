"""Diversity of the exact ShapesWorld modes across the seeds of one setting.

``mode_id`` per run is the world class it reached, -1 when it reached none within the
precision threshold (src/backbones/shapes_metrics.py); these summarize a group of runs.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence


def distinct_modes(mode_ids: Sequence[int]) -> int:
    """How many different modes the seeds reached (-1, no mode, is not one)."""
    return len({int(m) for m in mode_ids if int(m) >= 0})


def mode_entropy(mode_ids: Sequence[int]) -> float:
    """Entropy in bits of the reached modes' empirical distribution (seeds with -1 left out):
    0 when every seed reached the same mode, log2(k) for k modes reached equally often."""
    counts = Counter(int(m) for m in mode_ids if int(m) >= 0)
    n = sum(counts.values())
    return -sum(c / n * math.log2(c / n) for c in counts.values()) if n else 0.0
