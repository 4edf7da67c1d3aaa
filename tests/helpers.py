"""Small builders shared by the tests."""

from __future__ import annotations

import pytest
import torch

from src.backbones.mog import GaussianMixture
from src.schedules import Grid, Uniform


def make_guidance(cls, backbone, t: int | list[int] | None = None, representation=None, **kw):
    """A guidance object on ``backbone`` whose schedule returns fixed timesteps."""
    T = backbone.num_timesteps
    if t is None:
        schedule = Uniform(T)
    else:
        grid = [t] if isinstance(t, int) else list(t)
        schedule = Grid(T, grid)
    kw.setdefault("prompt", backbone.default_prompt)
    return cls(backbone=backbone, schedule=schedule, representation=representation, **kw)


def pixel_mixture(shape=(3, 8, 8), n_components: int = 3, var: float = 0.02, seed: int = 0) -> GaussianMixture:
    """An analytic pixel-space target: a few images in [-1, 1] with isotropic noise."""
    g = torch.Generator().manual_seed(seed)
    D = int(torch.tensor(shape).prod())
    means = (torch.rand(n_components, D, generator=g, dtype=torch.float64) * 2 - 1).tolist()
    tags = [["img"] for _ in range(n_components)]
    return GaussianMixture(means=means, covs=[var] * n_components, tags=tags, default_prompt="img",
                           name="pixels")




@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on a loaded 2-core machine OpenMP
    barriers turned a 10 ms forward into 2 s. A module uses it with ``from tests.helpers import
    one_thread`` (pytest then applies it to that module's tests)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def two_finite_steps(trainer) -> dict:
    """Two trainer steps whose logs and representation gradients are finite; the last step's logs."""
    for step in range(2):
        logs = trainer.train_step(step)
        assert all(torch.isfinite(torch.tensor(float(v))) for v in logs.values()), logs
        grads = [p.grad for p in trainer.c.representation.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads)
    return logs
