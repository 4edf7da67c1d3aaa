"""Timestep rules: ranges, monotonicity, the anneal switch."""

import pytest
import torch

from src.checks import ConfigError
from src.clock import run_length
from src.schedules import Anneal, DreamTime, Grid, LinearDecreasing, Sqrt, Uniform

T, STEPS = 1000, 200


def draw(s, step, n=512):
    return s.sample(step, n, torch.Generator().manual_seed(step))


def test_uniform_range_and_anneal_switch():
    u = Uniform(T, 0.02, 0.98)
    t = draw(u, 0)
    assert t.min() >= 20 and t.max() <= 980 and t.float().std() > 200
    a = Anneal(T, 0.02, 0.98, t_max_end=0.5, anneal_step=100)
    assert draw(a, 99).max() > 900 and draw(a, 100).max() <= 500


@pytest.mark.parametrize("cls", [LinearDecreasing, Sqrt])
def test_deterministic_schedules_decrease_from_t_max_to_t_min(cls):
    s = cls(T, run_length(STEPS), 0.02, 0.98)
    ts = [int(draw(s, k, 4)[0]) for k in range(STEPS)]
    assert ts[0] == 980 and ts[-1] == 20
    assert all(a >= b for a, b in zip(ts, ts[1:]))
    assert len(set(draw(s, 7, 4).tolist())) == 1  # one t for the whole batch


def test_sqrt_spends_less_time_at_high_t_than_linear():
    lin, sq = LinearDecreasing(T, run_length(STEPS)), Sqrt(T, run_length(STEPS))
    k = STEPS // 4
    assert int(draw(sq, k, 1)[0]) < int(draw(lin, k, 1)[0])


def test_dreamtime_is_monotone_and_spends_most_steps_mid_range():
    d = DreamTime(T, run_length(STEPS))
    ts = torch.tensor([int(draw(d, k, 1)[0]) for k in range(STEPS)])
    assert (ts[1:] <= ts[:-1]).all() and ts[0] <= 980 and ts[-1] >= 20
    mid = ((ts >= 450) & (ts <= 820)).float().mean()
    assert mid > 0.5  # time-prioritized: the bulk of steps on the plateau [500, 800]


def test_bad_ranges_are_rejected():
    with pytest.raises(ConfigError, match=r"schedule.t_max=0.1 is invalid: must be >= 0.9 and <= 1.0"):
        Uniform.validate_config({"t_min": 0.9, "t_max": 0.1}, "schedule")
    with pytest.raises(ConfigError, match=r"schedule.t_max_end=0.01 is invalid"):
        Anneal.validate_config({"t_min": 0.02, "t_max": 0.98, "t_max_end": 0.01, "anneal_step": 10}, "schedule")
    with pytest.raises(ValueError, match=r"\[0, 999\]"):
        Grid(T, [1000])
