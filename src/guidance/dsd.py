"""DSD (papers/dsd.txt Algorithm 3). docs/methods.md:
t decreasing; t_d = min(t + delta, T-1); x(t_d) = DDIM from the run's fixed eps* (at most
n_ddim steps from T); e_d = e_s(x(t_d); y'); xh(t) = alpha_t x + sigma_t e_d,
xh(t_d) = alpha_{t_d} x + sigma_{t_d} e_d; G = w(t) (e_s(xh(t); y_c) - e_{s_d}(xh(t_d); y_c)).

The trajectory's prompt y' (``trajectory_prompt``): ``plain`` (default) is the paper's
Algorithm 3, DDIM-Forward(eps*, y): one ODE per object, whatever the camera. ``view`` runs one
ODE per view prompt y_c (docs/methods.md's wording); from the same eps* those can end at different
objects (measured on ShapesWorld "a cone": seed 0's front / side / back / overhead ODEs end at
a blue, green, green and yellow cone), and a 3D object cannot be all of them at once.

The DDIM trajectory runs on a fixed grid T-1, T-1-D, ... (D = T // n_ddim) plus one partial
step to t_d. With ``cache=True`` the grid states are kept (per object and view prompt), and so
is the prediction at each grid state (the partial step from tau to t_d uses the same e(x_tau)
as the grid step from tau): the trajectory then costs a UNet call only when it first reaches a
grid state, not every step; because the cached and recomputed paths do the same arithmetic they
agree exactly (tests/test_guidance.py). The fast path (``backbone.fast``) computes e_t and e_td,
which both need e_d first, in one batched call.
On ShapesWorld's "a cone" (NeRF, 8 seeds) DSD reaches no cone under the view-prompt prior
(``backbone.view_conditioning=prompt``: a render at camera c is pulled toward the prompt's bin
images, seen from other cameras; with a view prompt's trajectory too, seed 0); under the default
prior, which knows the camera, Algorithm 3 as it stands reaches one on all 8
(``benchmarks/shapes_modes.md``, row dsd; docs/findings.md, "DSD").
``src/studies/diagnostics/dsd_view_consistency.py`` measures how far one eps*'s ODEs, conditioned on each data
camera, agree on the colour.

``delta=previous`` sets t_d to the previous step's t: with the DDIM grid as schedule this
is DSD*, which reproduces the DDIM sample (paper App. A; tests/test_exactness.py)."""

from __future__ import annotations

import torch
from torch import Tensor

from src import checks, rng
from src.cameras import ViewBatch
from src.diffusion import alpha_sigma, bcast, ddim_step
from src.guidance import noise
from src.guidance.base import Guidance, GuidanceOutput

DSD_DELTAS = ("official", "previous")
TRAJECTORY_PROMPTS = ("plain", "view")
# Official code: delta = U * 0.1 * (t - t_min), U ~ U[0, 1] (``delta_fraction`` = 0.1).
OFFICIAL_DELTA_FRACTION = 0.1


class DSD(Guidance):
    def __init__(self, *args, scale_td: float = 1.0, n_ddim: int = 10, delta: str = "official",
                 delta_fraction: float = OFFICIAL_DELTA_FRACTION, cache: bool = True,
                 trajectory_prompt: str = "plain", **kwargs):
        representation = kwargs.get("representation")
        super().__init__(*args, **kwargs)
        self.scale_td, self.delta, self.cache = float(scale_td), delta, cache
        self.delta_fraction = float(delta_fraction)
        T = self.backbone.num_timesteps
        self.grid = list(range(T - 1, -1, -(T // n_ddim)))[:n_ddim]
        self.n_objects = 1 if representation is None else representation.n_objects
        # (V, *E) embeddings of the trajectories' prompts: the plain prompt, or each view prompt
        self.traj_cond = self.cond.cond if trajectory_prompt == "view" else self.backbone.embed(self.prompt)[None]
        self.n_views = self.traj_cond.shape[0]
        self._states: dict[int, Tensor] = {}
        self._eps: dict[int, Tensor] = {}  # e_s(x(tau)) at the cached grid states
        self.prev_t: int | None = None

    @classmethod
    def check_config(cls, cfg, key):
        super().check_config(cfg, key)
        checks.number(cfg, "scale_td", f"{key}.scale_td", lo=1.0)
        checks.number(cfg, "n_ddim", f"{key}.n_ddim", lo=1, integer=True)
        checks.choice(cfg, "delta", f"{key}.delta", DSD_DELTAS)
        checks.number(cfg, "delta_fraction", f"{key}.delta_fraction", lo=0.0, lo_open=True)
        checks.choice(cfg, "trajectory_prompt", f"{key}.trajectory_prompt", TRAJECTORY_PROMPTS)

    # --- the DDIM trajectory from eps* ----------------------------------------------
    def _keys(self, views: ViewBatch) -> Tensor:
        view = views.view_idx if self.n_views > 1 else torch.zeros_like(views.view_idx)
        return views.index * self.n_views + view

    def _ddim(self, x: Tensor, t_from: int, t_to: int) -> Tensor:
        """One DDIM step for every (object, trajectory prompt) trajectory at once."""
        n = x.shape[0]
        t = torch.full((n,), t_from, dtype=torch.long, device=x.device)
        e = self._eps.get(t_from) if self.cache and self._states.get(t_from) is x else None
        if e is None:
            view = torch.arange(n) % self.n_views
            emb, null = self.traj_cond[view.to(self.traj_cond.device)], self.cond.null(n)
            with torch.no_grad():
                e = self.backbone.eps(x, t, emb, null, self.scale)
            if self.cache and self._states.get(t_from) is x:
                self._eps[t_from] = e
        abar = self.abar.to(x.device)
        return ddim_step(x, e, abar[t], abar[torch.full_like(t, t_to)]).to(x.dtype)

    def trajectory(self, t_d: int, like: Tensor) -> Tensor:
        """x(t_d) for every (object, view) key: (n_objects * n_views, *like.shape[1:])."""
        n = self.n_objects * self.n_views
        cached = [g for g in self._states if g >= t_d] if self.cache else []
        if cached:
            tau = min(cached)
            x = self._states[tau]
        else:
            tau = self.grid[0]
            objects = torch.arange(n) // self.n_views  # every view prompt of object k starts at eps*_k
            x = noise.fixed_per_object(like.shape[1:], objects, self.seed, like)
            if self.cache:
                self._states[tau] = x
        for g in self.grid:
            if t_d < g < tau:
                x = self._ddim(x, tau, g)
                tau = g
                if self.cache:
                    self._states[tau] = x
        if t_d < tau:
            x = self._ddim(x, tau, t_d)
        return x

    # --- the estimator ----------------------------------------------------------------
    def target_time(self, t: int, step: int) -> int:
        T = self.backbone.num_timesteps
        if self.delta == "previous":
            return T - 1 if self.prev_t is None else self.prev_t
        t_min = int(round(self.schedule.t_min * T))
        u = float(torch.rand((), generator=self.rng(step, rng.Stream.DSD_DELTA)))
        return min(t + int(u * self.delta_fraction * max(t - t_min, 0)), T - 1)

    def forward(self, x, views, step, out=None):
        x = x.detach()
        t = self.timesteps(step, x.shape[0]).to(x.device)
        t0 = int(t[0])  # decreasing schedules give the whole batch one t
        t_d = torch.full_like(t, self.target_time(t0, step))
        keys = self._keys(views).to(x.device)
        x_td = self.trajectory(int(t_d[0]), x)[keys]
        emb, null = self.text(views)
        traj_emb = self.traj_cond[(keys % self.n_views).to(self.traj_cond.device)]
        a_t, s_t = alpha_sigma(self.abar, t)
        a_d, s_d = alpha_sigma(self.abar, t_d)
        with torch.no_grad():
            e_d = self.backbone.eps(x_td, t_d, traj_emb, null, self.scale)  # the ODE's own noise
            xh_t = bcast(a_t, x) * x + bcast(s_t, x) * e_d
            xh_d = bcast(a_d, x) * x + bcast(s_d, x) * e_d
            # eager: two calls; fast path: one (Backbone.eps_batch)
            e_t, e_td = self.backbone.eps_batch([(xh_t, t, self.scale), (xh_d, t_d, self.scale_td)], emb, null)
        self.prev_t = t0
        return GuidanceOutput(grad=self.w(t, x) * (e_t - e_td), t=t, logs={"t_d": float(t_d[0])})

    # prev_t is the only state the trajectory cannot rebuild: it travels with checkpoints
    def get_extra_state(self):
        return {"prev_t": self.prev_t}

    def set_extra_state(self, state):
        self.prev_t = (state or {}).get("prev_t")
