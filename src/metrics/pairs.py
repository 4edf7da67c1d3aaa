"""The one way a group metric is averaged: mean over unordered pairs of seeds."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")


def mean_pairwise(items: Sequence[T], distance: Callable[[T, T], float]) -> float:
    """Mean of ``distance(a, b)`` over the n (n - 1) / 2 unordered pairs; NaN below two items."""
    pairs = list(itertools.combinations(items, 2))
    if not pairs:
        return math.nan
    return sum(float(distance(a, b)) for a, b in pairs) / len(pairs)
