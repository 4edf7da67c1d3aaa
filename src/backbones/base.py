"""The prior interface every guidance method talks to (DESIGN.md "Interfaces").

A backbone exposes its noise schedule (``alphas_cumprod``), a map between
renders and backbone space (``encode`` / ``decode``), text conditioning
(``embed`` one prompt, ``conditioning`` for a run) and the epsilon prediction
``predict_eps(x_t, t, emb)``. Classifier-free guidance in the diffusers
convention (docs/methods.md) is implemented once, here, as one batched call.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from src import checks
from src.cameras import VIEW_NAMES
from src.diffusion import ddim_step

# Samples of the prior for FID (esd Sec. 6: "sample N images using the pre-trained latent
# diffusion model given text prompts"): diffusers' StableDiffusionPipeline defaults.
PRIOR_DDIM_STEPS = 50  # num_inference_steps
PRIOR_CFG_SCALE = 7.5  # guidance_scale


@dataclass
class Conditioning:
    """Text conditioning of one run.

    cond:    (V, *E) one embedding per view-prompt variant (V = len(VIEW_NAMES) when
             view-dependent prompting is on, else 1).
    uncond:  (*E) the null / negative-prompt embedding.
    prompts: the V prompt strings, for logs.
    """

    cond: Tensor
    uncond: Tensor
    prompts: list[str]

    def select(self, view_idx: Tensor) -> Tensor:
        """Per-sample conditional embeddings, (B,) -> (B, *E)."""
        if self.cond.shape[0] == 1:
            view_idx = torch.zeros_like(view_idx)
        return self.cond[view_idx.to(self.cond.device)]

    def null(self, batch: int) -> Tensor:
        """(B, *E) copies of the null embedding."""
        return self.uncond.unsqueeze(0).expand(batch, *self.uncond.shape)


class Backbone(checks.Configurable, nn.Module):
    """Base class of the frozen priors: every attribute a component may ask a backbone for.

    Subclasses register a float64 buffer ``alphas_cumprod`` (T,) and implement ``embed`` and
    ``predict_eps``; the rest has a default here.
    """

    #: what x is: "vector" (points in R^D), "pixel" (images in [-1, 1]) or "latent" (VAE latents)
    space: str = "pixel"
    #: representation kinds this backbone can drive (Representation.kind)
    supported_representations: tuple[str, ...] = ("image", "3d")
    #: prompt used when the config leaves ``prompt`` empty
    default_prompt: str = ""
    #: side of the square images the prior sees, in pixels (None: not an image prior)
    resolution: int | None = None
    #: the fast path (Stable Diffusion's ``backbone.fast``): several predictions of one step in one
    #: batched network call where the math allows, replayed from CUDA graphs on a GPU. False: the
    #: eager reference, one call per prediction as each method's formula is written.
    fast: bool = False

    alphas_cumprod: Tensor

    @property
    def num_timesteps(self) -> int:
        return int(self.alphas_cumprod.shape[0])

    # --- text -----------------------------------------------------------------
    def embed(self, text: str) -> Tensor:
        """Embedding of one prompt, (*E). Unknown vocabulary must raise ValueError."""
        raise NotImplementedError

    def validate_prompt(self, prompt: str) -> None:
        """Raise ValueError (listing what is allowed) before any compute."""
        self.embed(prompt)

    @classmethod
    def check_prompt(cls, cfg, prompt: str) -> None:
        """Check ``prompt`` against what the backbone config ``cfg`` allows, before anything
        is built (src/build.py: validate); ``validate_prompt`` checks it again once built."""

    def conditioning(
        self, prompt: str, negative: str = "", view_dependent: bool = False
    ) -> Conditioning:
        prompts = [f"{prompt}, {v} view" for v in VIEW_NAMES] if view_dependent else [prompt]
        cond = torch.stack([self.embed(p) for p in prompts])
        return Conditioning(cond=cond, uncond=self.embed(negative), prompts=prompts)

    def condition_on_views(self, emb: Tensor, views, null: bool = False) -> Tensor:
        """Per-sample conditioning (B, *E) given the rendering cameras: the view prompts' own
        by default (a text prior knows the view only through its prompt's bin). ``null``: emb is
        the null prompt's (a multi-view prior poses it too; the others leave it as it is)."""
        return emb

    # --- space ----------------------------------------------------------------
    def x_shape(self, height: int | None = None, width: int | None = None) -> tuple[int, ...]:
        """Shape of one x in backbone space for renders of height x width (default: the
        prior's own resolution): (3, H, W) for pixel priors; latent / vector priors override."""
        H = int(height or self.resolution)
        return (3, H, int(width or H))

    def encode(self, rgb: Tensor) -> Tensor:
        """Render -> backbone space, keeping the graph."""
        return rgb

    def decode(self, x: Tensor) -> Tensor:
        """Backbone space -> render space (for logging / rewards)."""
        return x

    # --- the model ------------------------------------------------------------
    def predict_eps(self, x_t: Tensor, t: Tensor, emb: Tensor) -> Tensor:
        """The raw epsilon prediction e(x_t, t, y): (B, ...), (B,), (B, *E) -> (B, ...)."""
        raise NotImplementedError

    def eps_pair(self, x_t: Tensor, t: Tensor, emb: Tensor, null: Tensor) -> tuple[Tensor, Tensor]:
        """(e(x_t; y), e(x_t; null)) in one batched call."""
        B = x_t.shape[0]
        e = self.predict_eps(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([emb, null]))
        return e[:B], e[B:]

    def eps(
        self, x_t: Tensor, t: Tensor, emb: Tensor, null: Tensor | None = None, scale: float = 1.0
    ) -> Tensor:
        """CFG prediction e_s = e(null) + s (e(y) - e(null)); s = 1 is e(y) alone (one call)."""
        if scale == 1.0 or null is None:
            return self.predict_eps(x_t, t, emb)
        e_c, e_u = self.eps_pair(x_t, t, emb, null)
        return self.cfg(e_c, e_u, scale)

    @staticmethod
    def cfg(e_c: Tensor, e_u: Tensor | None, scale: float) -> Tensor:
        """e_s = e_u + s (e_c - e_u) (diffusers convention); e_c when s = 1 or there is no e_u."""
        if scale == 1.0 or e_u is None:
            return e_c
        return e_u + scale * (e_c - e_u)

    # --- samples of the prior (FID / KID, src/metrics/) ----------------------------
    @torch.no_grad()
    def prior_samples(self, prompt: str, n: int, generator: torch.Generator,
                      resolution: int | None = None, scale: float = PRIOR_CFG_SCALE,
                      steps: int = PRIOR_DDIM_STEPS, batch: int = 8) -> Tensor:
        """n images the prior gives for ``prompt``, (n, H, W, 3) in [0, 1] on the CPU:
        deterministic DDIM from x_T ~ N(0, I) (drawn from ``generator``) with CFG ``scale``,
        decoded. ``resolution`` is a hint for priors that can render any size (this sampler
        uses the prior's own). Analytic priors with a known data set override it."""
        cond = self.conditioning(prompt)
        device = self.alphas_cumprod.device
        abar = self.alphas_cumprod.float()
        ts = torch.linspace(self.num_timesteps - 1, 0, steps).round().long().tolist()
        out = []
        for start in range(0, n, batch):
            b = min(batch, n - start)
            x = torch.randn((b, *self.x_shape()), generator=generator).to(device)
            emb, null = cond.select(torch.zeros(b, dtype=torch.long)), cond.null(b)
            for k, t in enumerate(ts):
                tt = torch.full((b,), t, dtype=torch.long, device=device)
                e = self.eps(x, tt, emb.to(device), null.to(device), scale).float()
                abar_s = abar[ts[k + 1]] if k + 1 < len(ts) else torch.ones((), device=device)
                x = ddim_step(x, e, abar[tt], abar_s.expand(b))
            out.append(self.decode(x).float().clamp(0, 1).cpu())
        return torch.cat(out)

    def eps_batch(self, calls: list[tuple[Tensor, Tensor, float]], emb: Tensor, null: Tensor) -> list[Tensor]:
        """CFG predictions [e_s(x_t; y) for (x_t, t, s) in calls], all with the text emb / null (B, *E).

        Eager reference: one ``eps`` per call. Fast path: every row (the conditional one, plus
        the null one where s != 1) in one ``predict_eps`` call; the same math, one launch series
        (DSD's e_t and e_td)."""
        if not self.fast:
            return [self.eps(x_t, t, emb, null, s) for x_t, t, s in calls]
        rows, texts, ts = [], [], []
        for x_t, t, s in calls:
            rows += [x_t] if s == 1.0 else [x_t, x_t]
            texts += [emb] if s == 1.0 else [emb, null]
            ts += [t] if s == 1.0 else [t, t]
        e = self.predict_eps(torch.cat(rows), torch.cat(ts), torch.cat(texts)).split(calls[0][0].shape[0])
        out, i = [], 0
        for _, _, s in calls:
            if s == 1.0:
                out.append(e[i])
                i += 1
            else:
                out.append(self.cfg(e[i], e[i + 1], s))
                i += 2
        return out

    def eps_pair_with_psi(self, x_t: Tensor, t: Tensor, emb: Tensor, null: Tensor | None, psi,
                          psi_emb: Tensor, cams: list[Tensor | None],
                          graph: bool = True) -> tuple[Tensor, Tensor | None, list[Tensor]]:
        """(e(x_t; y), e(x_t; null), [e_psi(x_t; y_psi, c) for c in cams]): the prior's predictions
        and psi's at one x_t (VSD, ESD, SIM). Keeps x_t's graph when it requires grad (SIM).

        x_t (B, ...), t (B,), emb / null / psi_emb (B, *E); null None: no null row (e(x_t; null) is
        None); a camera None is psi's null camera. ``psi`` is the guidance's ScoreModel.
        Eager reference (and any psi with a network of its own): psi's rows in one call
        (``psi.eps_cams``), then the prior's in one (``eps_pair``). Fast path, where psi can share
        the prior's network (``psi.supports_joint``: LoRA on SD's UNet): every row in ONE call,
        rows [cond, null, psi(c_1), ...], batch (2 + len(cams)) B, through ``psi.joint_eps``;
        graph=False keeps that call out of the CUDA graphs (a double backward: SIM's reward term)."""
        if not (self.fast and psi.supports_joint):
            e_psi = psi.eps_cams(x_t, t, cams, psi_emb)  # psi first: SIM's reference order (autograd
            # sums x_t's gradient in the order of the calls; the order never changes a value without one)
            e_c, e_u = (self.predict_eps(x_t, t, emb), None) if null is None else self.eps_pair(x_t, t, emb, null)
            return e_c, e_u, e_psi
        B = x_t.shape[0]
        zero = torch.zeros(B, psi.cam_dim, device=x_t.device)
        texts = [emb] + ([] if null is None else [null]) + [psi_emb.to(emb)] * len(cams)
        n_prior = len(texts) - len(cams)
        cam_rows = [zero] * n_prior + [zero if c is None else c.to(zero) for c in cams]
        psi_rows = torch.cat([torch.zeros(n_prior * B), torch.ones(len(cams) * B)]).to(x_t.device)
        n = len(texts)
        e = psi.joint_eps(torch.cat([x_t] * n), torch.cat([t] * n), torch.cat(texts), torch.cat(cam_rows),
                          psi_rows, graph=graph).split(B)
        return e[0], (None if null is None else e[1]), list(e[n_prior:])

    def eps_with_psi(self, x_t: Tensor, t: Tensor, emb: Tensor, null: Tensor | None, scale: float, psi,
                     psi_emb: Tensor, cams: list[Tensor | None]) -> tuple[Tensor, list[Tensor]]:
        """(e_s(x_t; y), [e_psi(x_t; y_psi, c) for c in cams]): the CFG prediction of ``eps`` and
        psi's, in one network call where the fast path can (``eps_pair_with_psi``)."""
        e_c, e_u, e_psi = self.eps_pair_with_psi(x_t, t, emb, null if scale != 1.0 else None, psi, psi_emb, cams)
        return self.cfg(e_c, e_u, scale), e_psi

    # --- exact metrics ----------------------------------------------------------
    def evaluate(self, samples: Tensor, views, prompt: str) -> dict[str, float]:
        """Metrics an analytic prior can compute exactly for renders ``samples`` at ``views``
        (the true distribution is known); {} for priors that cannot."""
        return {}
