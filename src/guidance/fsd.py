"""FSD (papers/fsd.txt Eq. 14-16). docs/methods.md: the SDS residual with noise that is a
deterministic function of the camera, and a decreasing t(tau):
x_t = alpha_t x + sigma_t eps(c), G = w(t) (e_s(x_t; y_c) - eps(c)),
eps(c) = sqrt(beta) eps_fixed(c) + sqrt(1 - beta) eps_fresh.

eps_fixed(c): the world-map noise of 3D cameras (noise_worldmap.py, masked by the
rendered opacity), or one fixed eps per object for fixed-camera 2D and the toys.
Proposition 1: on a 2D image with beta = 1, w = 1 and SGD steps
lr_k = sigma_k/alpha_k - sigma_{k+1}/alpha_{k+1}, this is DDIM (tests/test_exactness.py)."""

from __future__ import annotations

import torch

from src import checks, rng
from src.guidance import noise
from src.guidance.base import Guidance, GuidanceOutput
from src.guidance.noise_worldmap import world_map_noise

WORLD_MAP_KEYS = ("patch_angle_deg", "opacity_threshold")


class FSD(Guidance):
    def __init__(self, *args, beta: float = 1.0, world_map: dict | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.beta = float(beta)
        self.world_map = dict(world_map or {})

    @classmethod
    def check_config(cls, cfg, key):
        super().check_config(cfg, key)
        checks.probability(cfg, "beta", f"{key}.beta")
        wm = cfg.get("world_map") or {}
        unknown = sorted(set(wm) - set(WORLD_MAP_KEYS))
        checks.require(not unknown, f"{key}.world_map", dict(wm), f"keys: {', '.join(WORLD_MAP_KEYS)}")
        if "patch_angle_deg" in wm:
            checks.number(wm, "patch_angle_deg", f"{key}.world_map.patch_angle_deg", lo=0.0, hi=360.0,
                          lo_open=True)
        if "opacity_threshold" in wm:
            checks.probability(wm, "opacity_threshold", f"{key}.world_map.opacity_threshold")

    def camera_noise(self, x, views, step, out=None):
        fresh = self.rng(step, rng.Stream.NOISE)
        if views.c2w is not None:
            opacity = None if out is None else out.opacity
            return world_map_noise(x.shape, views, opacity, self.beta, self.seed, fresh, **self.world_map).to(x)
        fixed = noise.fixed_per_object(x.shape[1:], views.index, self.seed, x)
        if self.beta == 1.0:
            return fixed
        return self.beta**0.5 * fixed + (1.0 - self.beta) ** 0.5 * noise.fresh(x, fresh)

    def forward(self, x, views, step, out=None):
        x = x.detach()
        t, eps, x_t = self.perturb(x, step, eps=self.camera_noise(x, views, step, out))
        emb, null = self.text(views)
        with torch.no_grad():
            e = self.backbone.eps(x_t, t, emb, null, self.scale)
        return GuidanceOutput(grad=self.w(t, x) * (e - eps), t=t)
