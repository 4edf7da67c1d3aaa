"""Timestep rules (the ``schedule`` config group; docs/methods.md "Timestep sampling").

Every rule maps (step, batch, generator) to integer timesteps ``t`` (B,) in
[0, T-1]. Fractions ``t_min``/``t_max`` are of T. Stochastic rules draw i.i.d.
per sample; deterministic rules give the whole batch the same t. Each rule is one file of
``conf/schedule/``; a guidance picks its default in its own defaults list.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from src import checks
from src.clock import RunLength


class TimestepSchedule(checks.Configurable):
    injected = ("num_timesteps",)

    def __init__(self, num_timesteps: int, t_min: float = 0.02, t_max: float = 0.98):
        self.T = num_timesteps
        self.t_min, self.t_max = t_min, t_max

    def _int(self, frac: Tensor | float) -> Tensor:
        t = torch.as_tensor(frac, dtype=torch.float64) * self.T
        return t.round().long().clamp(0, self.T - 1)

    def sample(self, step: int, batch: int, generator: torch.Generator) -> Tensor:
        raise NotImplementedError

    @classmethod
    def check_config(cls, cfg, key):
        """0 <= t_min <= t_max <= 1 (fractions of T); rules with more bounds add theirs."""
        lo = checks.number(cfg, "t_min", f"{key}.t_min", lo=0.0, hi=1.0)
        checks.number(cfg, "t_max", f"{key}.t_max", lo=lo, hi=1.0)


class Uniform(TimestepSchedule):
    """t ~ U[t_min, t_max] i.i.d. (DreamFusion)."""

    def bounds(self, step: int) -> tuple[float, float]:
        return self.t_min, self.t_max

    def sample(self, step, batch, generator):
        lo, hi = self.bounds(step)
        u = torch.rand(batch, generator=generator, dtype=torch.float64)
        return self._int(lo + (hi - lo) * u)


class Anneal(Uniform):
    """Uniform with t_max dropped to ``t_max_end`` at ``anneal_step``
    (ProlificDreamer: 0.98 -> 0.5 at step 5000; SSD: [20, 980] -> [20, 500] at 5000)."""

    def __init__(self, num_timesteps, t_min=0.02, t_max=0.98, t_max_end=0.5, anneal_step=5000):
        super().__init__(num_timesteps, t_min, t_max)
        self.t_max_end, self.anneal_step = t_max_end, anneal_step

    @classmethod
    def check_config(cls, cfg, key):
        super().check_config(cfg, key)
        checks.number(cfg, "t_max_end", f"{key}.t_max_end", lo=float(cfg.get("t_min", 0.0)), hi=1.0)
        checks.number(cfg, "anneal_step", f"{key}.anneal_step", lo=0, integer=True)

    def bounds(self, step):
        return self.t_min, (self.t_max if step < self.anneal_step else self.t_max_end)


class Deterministic(TimestepSchedule):
    """t(tau) decreasing from t_max to t_min over the run; tau = step / (max_steps - 1): the rule
    reads the run's length (src/clock.py)."""

    def __init__(self, num_timesteps: int, run_length: RunLength, t_min: float = 0.02, t_max: float = 0.98):
        super().__init__(num_timesteps, t_min, t_max)
        self.max_steps = max(run_length.steps(), 1)

    def frac(self, tau: float) -> float:
        raise NotImplementedError

    def sample(self, step, batch, generator):
        tau = min(step / max(self.max_steps - 1, 1), 1.0)
        return self._int(self.frac(tau)).expand(batch).clone()


class LinearDecreasing(Deterministic):
    """Linear in tau (FSD's follow-up code; ``t(tau)`` of FSD Eq. 9)."""

    def frac(self, tau):
        return self.t_max - (self.t_max - self.t_min) * tau


class Sqrt(Deterministic):
    """HiFA / DSD's square-root annealing: t = t_max - (t_max - t_min) sqrt(tau)."""

    def frac(self, tau):
        return self.t_max - (self.t_max - self.t_min) * math.sqrt(tau)


# DreamTime (Huang et al. 2023, "DreamTime: An Improved Optimization Strategy for
# Text-to-3D Content Creation"): a prior weight over t that is flat on [m2, m1] with
# Gaussian shoulders of widths s1 (above) and s2 (below); t(tau) walks down its tail mass.
# Constants as in the public implementations of the paper's schedule.
DREAMTIME_M1, DREAMTIME_M2 = 800, 500
DREAMTIME_S1, DREAMTIME_S2 = 300, 100


class DreamTime(Deterministic):
    """Time-prioritized schedule: t(tau) = argmin_t |sum_{t'>=t} p(t') - tau|."""

    def __init__(self, num_timesteps, run_length, t_min=0.02, t_max=0.98, m1=DREAMTIME_M1, m2=DREAMTIME_M2, s1=DREAMTIME_S1, s2=DREAMTIME_S2):
        super().__init__(num_timesteps, run_length, t_min, t_max)
        t = torch.arange(num_timesteps, dtype=torch.float64)
        p = torch.ones_like(t)
        p = torch.where(t > m1, torch.exp(-((t - m1) ** 2) / (2 * s1**2)), p)
        p = torch.where(t < m2, torch.exp(-((t - m2) ** 2) / (2 * s2**2)), p)
        lo, hi = int(round(t_min * num_timesteps)), int(round(t_max * num_timesteps))
        p[:lo] = 0
        p[hi + 1 :] = 0
        p = p / p.sum()
        # tail[t] = sum_{t' >= t} p(t')
        self.tail = torch.flip(torch.cumsum(torch.flip(p, [0]), 0), [0])
        self.lo, self.hi = lo, hi

    def sample(self, step, batch, generator):
        tau = min(step / max(self.max_steps - 1, 1), 1.0)
        window = self.tail[self.lo : self.hi + 1]
        t = self.lo + int(torch.argmin((window - tau).abs()))
        return torch.full((batch,), t, dtype=torch.long)


class Grid(TimestepSchedule):
    """An explicit list of integer timesteps, one per step (DDIM grids for FSD / DSD* tests)."""

    def __init__(self, num_timesteps, timesteps: list[int]):
        super().__init__(num_timesteps, 0.0, 1.0)
        self.grid = [int(t) for t in timesteps]
        if any(not 0 <= t < num_timesteps for t in self.grid):
            raise ValueError(f"schedule.timesteps must lie in [0, {num_timesteps - 1}]")

    @classmethod
    def check_config(cls, cfg, key):
        pass  # checked against T when built

    def sample(self, step, batch, generator):
        return torch.full((batch,), self.grid[min(step, len(self.grid) - 1)], dtype=torch.long)
