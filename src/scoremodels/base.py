"""ScoreModel base: epsilon prediction e_psi(x_t; y, c) plus its online fitting rule.

psi is the ``score_model`` config group (conf/score_model/, ``_partial_: true``): the
backbone's config chooses its default, the guidance completes it at run time with the
backbone and the representation.

On Stable Diffusion psi starts as the prior (DESIGN.md "Interfaces"): a LoRA on the prior's
own UNet. The analytic priors offer the same structure (``from_prior: true``): the frozen
prior's conditional prediction plus a trainable, camera-conditioned correction whose output
layer starts at zero,

    e_psi(x_t; y, c) = e(x_t; y) + f_phi(x_t, t, c),    f_phi = 0 at step 0,

so at step 0 psi equals the prior exactly. Their default is ``from_prior: false`` (f_phi alone,
from scratch): measured on the exact priors the correction cannot cancel the prior's unbounded
small-t prediction for renders off its discrete data set (numbers in conf/score_model/unet.yaml).

What a from-scratch network outputs (``prediction``) is converted to epsilon with the forward
process x_t = alpha_t x_0 + sigma_t eps (alpha^2 + sigma^2 = 1):

    eps: e = f,   x0: e = (x_t - alpha_t f) / sigma_t,   v: e = alpha_t f + sigma_t x_t

The value fitted is the same (the DSM loss stays on epsilon); the input Jacobian differs, and
SIM differentiates psi through its input. For the renders of one camera (a point mass) the ideal
psi is e = (x_t - alpha_t x_0(c)) / sigma_t: an ``eps`` network must learn that identity-like
Jacobian I / sigma_t itself, an ``x0`` network holds it by construction and only learns the
render x_0(c), flat in x_t (scripts/sim_weighting_profile.py measures the gap). Measured on
ShapesWorld, x0 and v are worse psis for VSD and SIM alike (conf/score_model/unet.yaml): the
default stays eps, the other two are there for comparison.

The fitting rule is VSD's (docs/methods.md): after each
generator step, one denoising score-matching step on fresh ``t' ~ U[t_min, t_max)`` and
``eps'``, ``|| e_psi(alpha_t' sg(x) + sigma_t' eps'; y, c~) - eps' ||^2`` with
``c~ = null`` with probability ``p_drop`` (the method's camera dropout, a guidance key).

Second-order DSM (``jacobian_weight`` > 0; Meng et al. 2021, "Estimating high order gradients of
the data distribution by denoising"): SIM's step runs through psi's input Jacobian
J = d e_psi / d x_t, whose ideal value is (I - Cov[eps | x_t]) / sigma_t. Fitting J too adds

    jacobian_weight * || sigma_t J v - (v - r (r . v)) ||^2,    r = sg(eps' - e_psi), v ~ N(0, I),

whose mean over eps' is minimized by that J when e_psi is E[eps | x_t] (``second_order``), or
with r = 0, the point mass's I / sigma_t: the renders of one camera are one image
(``point_mass``). Measured on ShapesWorld it does not help SIM (conf/score_model/unet.yaml); the
default stays 0, VSD's rule.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from src import checks
from src.cameras import ViewBatch
from src.diffusion import add_noise, alpha_sigma, bcast, v_to_eps, x0_to_eps
from src.modules import hold

PREDICTIONS = ("eps", "x0", "v")
JACOBIAN_TARGETS = ("second_order", "point_mass")


class ScoreModel(checks.Configurable, nn.Module):
    """Subclasses implement ``eps`` and build their parameters in ``__init__``.

    cam=None means camera-unconditional (the null camera, docs/methods.md ``c = null``).
    """

    #: networks embed the null camera as zeros, so null and real cameras batch together
    null_camera_is_zeros = True
    #: ``joint_eps`` exists: prior rows and psi rows in one network call (LoRA on the prior's UNet),
    #: which ``Backbone.eps_pair_with_psi`` uses on the fast path
    supports_joint = False
    injected = ("backbone", "representation")

    def __init__(
        self,
        alphas_cumprod: Tensor,
        lr: float = 1e-3,
        t_min: float = 0.0,
        t_max: float = 1.0,
        steps_per_update: int = 1,
        weight_decay: float = 0.0,
        prior=None,
        prediction: str = "eps",
        jacobian_weight: float = 0.0,
        jacobian_target: str = "second_order",
    ):
        """prior: the frozen backbone when psi = prior + correction (module docstring), else None.
        prediction: what the network outputs (module docstring); a correction is always epsilon.
        jacobian_weight: weight of the second-order DSM term (module docstring); 0 = VSD's rule."""
        super().__init__()
        if jacobian_weight < 0:
            raise ValueError(f"jacobian_weight={jacobian_weight}; valid: >= 0")
        if jacobian_target not in JACOBIAN_TARGETS:
            raise ValueError(f"jacobian_target={jacobian_target!r}; valid: {', '.join(JACOBIAN_TARGETS)}")
        self.jacobian_weight, self.jacobian_target = float(jacobian_weight), jacobian_target
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction={prediction!r}; valid: {', '.join(PREDICTIONS)}")
        if prior is not None and prediction != "eps":
            raise ValueError(f"prediction={prediction!r} needs from_prior=false: a correction to the "
                             "prior's epsilon is an epsilon")
        self.prediction = prediction
        hold(self, "prior", prior)
        self.register_buffer("alphas_cumprod", alphas_cumprod.clone(), persistent=False)
        self.lr, self.weight_decay = lr, weight_decay
        self.t_min, self.t_max = t_min, t_max
        self.steps_per_update = steps_per_update
        self._optimizer: torch.optim.Optimizer | None = None

    @classmethod
    def check_config(cls, cfg, key):
        if "lr" in cfg:
            checks.number(cfg, "lr", f"{key}.lr", lo=0.0)
        if "t_min" in cfg:
            lo = checks.number(cfg, "t_min", f"{key}.t_min", lo=0.0, hi=1.0)
            checks.number(cfg, "t_max", f"{key}.t_max", lo=lo, hi=1.0)
        if "steps_per_update" in cfg:
            checks.number(cfg, "steps_per_update", f"{key}.steps_per_update", lo=1, integer=True)
        if "weight_decay" in cfg:
            checks.number(cfg, "weight_decay", f"{key}.weight_decay", lo=0.0)
        if "jacobian_weight" in cfg:
            checks.number(cfg, "jacobian_weight", f"{key}.jacobian_weight", lo=0.0)
        if cfg.get("jacobian_target") is not None:
            checks.choice(cfg, "jacobian_target", f"{key}.jacobian_target", JACOBIAN_TARGETS)
        if cfg.get("prediction") is not None:
            checks.choice(cfg, "prediction", f"{key}.prediction", PREDICTIONS)
            checks.require(cfg.prediction == "eps" or not cfg.get("from_prior", False), f"{key}.prediction",
                           cfg.prediction, "eps when from_prior=true (a correction to the prior's epsilon)")

    # --- prediction -----------------------------------------------------------
    def eps(self, x_t: Tensor, t: Tensor, cam: Tensor | None, emb: Tensor | None = None) -> Tensor:
        raise NotImplementedError

    def eps_cams(self, x_t: Tensor, t: Tensor, cams: list[Tensor | None], emb: Tensor | None = None) -> list[Tensor]:
        """[e_psi(x_t; y, c) for c in cams] (a camera None: the null camera): one call over every
        camera where the null camera is zeros (a network), one call per camera otherwise (the
        closed form's null is its marginal)."""
        real = [c for c in cams if c is not None]
        if len(cams) == 1 or not real or not self.null_camera_is_zeros:
            return [self.eps(x_t, t, c, emb) for c in cams]
        n = len(cams)
        rows = torch.cat([torch.zeros_like(real[0]) if c is None else c for c in cams])
        e = self.eps(torch.cat([x_t] * n), torch.cat([t] * n), rows, None if emb is None else torch.cat([emb] * n))
        return list(e.split(x_t.shape[0]))

    def joint_eps(self, x_t: Tensor, t: Tensor, emb: Tensor, cam: Tensor, psi_rows: Tensor,
                  graph: bool = True) -> Tensor:
        """Rows of the prior (psi_rows 0) and of psi (1) in one call (``supports_joint``)."""
        raise NotImplementedError(f"{type(self).__name__} cannot share a call with the prior")

    def to_eps(self, out: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """The network's output in ``prediction`` as epsilon (module docstring)."""
        if self.prediction == "eps":
            return out
        convert = x0_to_eps if self.prediction == "x0" else v_to_eps
        return convert(x_t, out, self.alphas_cumprod, t)

    def with_prior(self, out: Tensor, x_t: Tensor, t: Tensor, emb: Tensor | None) -> Tensor:
        """psi's epsilon from the network's output: ``to_eps(out)``, plus e(x_t; y) when psi starts
        as the prior (then out is an epsilon correction). The prior keeps x_t's graph: SIM
        differentiates psi through its input."""
        correction = self.to_eps(out, x_t, t)
        if self.prior is None:
            return correction
        if emb is None:
            raise ValueError(f"{type(self).__name__} from the prior needs the text embedding emb")
        return self.prior.predict_eps(x_t, t, emb).to(correction.dtype) + correction

    # --- fitting --------------------------------------------------------------
    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    @property
    def optimizer(self) -> torch.optim.Optimizer | None:
        params = self.trainable_parameters()
        if self._optimizer is None and params:
            self._optimizer = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
        return self._optimizer

    def dsm_sample(self, x: Tensor, views: ViewBatch, generator: torch.Generator,
                   p_drop: float = 0.0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The DSM step's draw on detached renders x (B, ...): x_t, t' (B,), eps', and the
        cameras (B, D_cam) with the null (zero) camera where dropped."""
        B, T = x.shape[0], self.alphas_cumprod.shape[0]
        lo, hi = int(self.t_min * T), max(int(self.t_max * T), int(self.t_min * T) + 1)
        t = torch.randint(lo, hi, (B,), generator=generator).to(x.device)
        eps = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
        x_t = add_noise(x.detach(), eps, self.alphas_cumprod, t)
        cam = views.cam.to(x.device, x.dtype)
        drop = (torch.rand(B, generator=generator) < p_drop).to(x.device)
        cam = torch.where(drop[:, None], torch.zeros_like(cam), cam)
        return x_t, t, eps, cam

    def dsm_loss(self, x: Tensor, views: ViewBatch, generator: torch.Generator, emb: Tensor | None = None,
                 p_drop: float = 0.0) -> Tensor:
        """Denoising score matching on detached renders x (B, ...)."""
        x_t, t, eps, cam = self.dsm_sample(x, views, generator, p_drop)
        if not self.jacobian_weight:
            pred = self.eps(x_t, t, cam, emb)
            return ((pred - eps) ** 2).flatten(1).sum(1).mean()
        v = torch.randn(x_t.shape, generator=generator, dtype=x_t.dtype).to(x_t.device)
        pred, jv = self.eps_jvp(x_t, t, cam, emb, v)
        return (((pred - eps) ** 2).flatten(1).sum(1).mean()
                + self.jacobian_weight * self.jacobian_loss(jv, v, eps - pred.detach(), t))

    def eps_jvp(self, x_t: Tensor, t: Tensor, cam: Tensor | None, emb: Tensor | None,
                v: Tensor) -> tuple[Tensor, Tensor]:
        """(e_psi(x_t), J v), J = d e_psi / d x_t, both differentiable in psi's parameters. Double
        backward (J v = d/du [v . J^T u]): forward-mode AD has no rule for the CPU's fused attention.
        The math attention kernel is twice differentiable everywhere."""
        x_t = x_t.detach().requires_grad_(True)
        with torch.enable_grad(), sdpa_kernel(SDPBackend.MATH):
            out = self.eps(x_t, t, cam, emb)
            u = torch.zeros_like(out, requires_grad=True)
            vjp = torch.autograd.grad(out, x_t, u, create_graph=True)[0]
            jv = torch.autograd.grad(vjp, u, v, create_graph=True)[0]
        return out, jv

    def jacobian_loss(self, jv: Tensor, v: Tensor, r: Tensor, t: Tensor) -> Tensor:
        """Second-order DSM (module docstring): || sigma_t J v - (v - r (r . v)) ||^2, r = eps - e_psi
        detached; its conditional mean is minimized by psi's true Jacobian (I - Cov[eps | x_t]) / sigma_t."""
        sigma = bcast(alpha_sigma(self.alphas_cumprod, t)[1], jv)
        target = v if self.jacobian_target == "point_mass" else v - r * bcast((r * v).flatten(1).sum(1), r)
        return ((sigma * jv - target) ** 2).flatten(1).sum(1).mean()

    def fit_step(self, x: Tensor, views: ViewBatch, generator: torch.Generator, emb: Tensor | None = None,
                 p_drop: float = 0.0) -> dict[str, float]:
        opt = self.optimizer
        if opt is None:
            return {}
        total = 0.0
        for _ in range(self.steps_per_update):
            opt.zero_grad(set_to_none=True)
            loss = self.dsm_loss(x, views, generator, emb, p_drop)
            loss.backward()
            opt.step()
            total += float(loss.detach())
        return {"psi_loss": total / self.steps_per_update}

    # the optimizer's state travels with the module's state_dict (checkpoints)
    def get_extra_state(self):
        return {"optimizer": None if self._optimizer is None else self._optimizer.state_dict()}

    def set_extra_state(self, state) -> None:
        if state and state.get("optimizer") is not None and self.optimizer is not None:
            self.optimizer.load_state_dict(state["optimizer"])
