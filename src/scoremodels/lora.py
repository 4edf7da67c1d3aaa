"""psi as LoRA on the backbone's own UNet (ProlificDreamer's VSD, ESD, Dive3D/SIM).

One UNet sits in memory: peft adapters are added to ``backbone.unet`` and switched on only
inside ``LoRAScore.eps``; the pretrained prior (``backbone.predict_eps``) runs with them off.
The guidance hands psi that backbone: ``LoRAHost`` lists what psi reads of it (the UNet, its
adapter switch, the fast path's graphs), so psi imports no backbone
(src/backbones/sd.py's ``StableDiffusion`` is one).
The camera enters as in threestudio's VSD: the flattened 4x4 camera-to-world matrix (16
numbers) through Linear-SiLU-Linear, added to the UNet's timestep embedding (a forward hook
on ``unet.time_embedding``, active on the LoRA branch only). The null camera (``cam=None``,
or camera dropout) is the zero matrix through the same MLP, as threestudio feeds it.

Initialization makes psi equal to the pretrained UNet at step 0 (ProlificDreamer starts psi
from the prior): LoRA's B matrices and the camera MLP's last layer start at zero.

Trainable state (LoRA weights + camera MLP, float32 even when the UNet is fp16, so AdamW's
updates are not lost to fp16 rounding) is saved with psi's state_dict; the UNet is not.

Precision of psi's training (fp16 or bf16 UNet): no loss scaling. The weights AdamW updates are
float32, the DSM loss is computed in float32 (the UNet's output is cast back), and it is a *sum*
over the latent's pixels, so the gradient entering the UNet's backward is 2 (e_psi - eps') per
element, O(1): far above fp16's subnormal range (6e-8), where a loss scale would matter, and a
GradScaler's changing scale would have to live inside the captured graph. What fp16 can still
do is overflow; a step whose loss or gradient norm is not finite is skipped (``psi_skipped`` in
the logs), as a GradScaler would skip it, and the weights stay as they were. bf16 has float32's
range and needs neither.

Fast path (``backbone.fast``): ``joint_eps`` runs prior rows and psi rows in ONE UNet call (the
estimators ask for it through ``Backbone.eps_pair_with_psi``). A row mask multiplies the output
of every LoRA ``lora_B`` (a forward hook) and the camera embedding, so a prior row is
``base(x) + 0`` in every adapted layer: the pretrained UNet, exactly as with the adapters off
(peft's own ``adapter_names`` mixed batch does the same with per-layer index lists, host-side
tensors that a CUDA graph cannot capture). psi's forward and its DSM step
(forward + backward; AdamW stays eager) replay CUDA graphs from ``backbone.graphs``; AdamW and
``load_state_dict`` update the weights in place, so the graphs see every update and a resume.
"""

from __future__ import annotations

import contextlib
import math
from typing import Protocol

import torch
from torch import Tensor, nn

from src import checks
from src.modules import hold
from src.scoremodels.base import ScoreModel

# ProlificDreamer / threestudio: LoRA on every attention projection of the UNet
# (LoRAAttnProcessor: to_q, to_k, to_v, to_out.0), rank 4, AdamW lr 1e-4.
TARGET_MODULES = ("to_q", "to_k", "to_v", "to_out.0")
DEFAULT_RANK = 4
DEFAULT_LR = 1e-4


class LoRAHost(Protocol):
    """What LoRA's psi needs of the prior it adapts (the ``backbone`` its guidance passes)."""

    unet: nn.Module  # the diffusers UNet psi's adapters are added to, in place
    fast: bool  # the fast path: psi's calls replay CUDA graphs from ``graphs``
    graphs: object  # the prior's GraphCache (src/backbones/graphs.py), shared with psi
    adapter_parameters: list  # psi's LoRA weights, kept trainable while adapters toggle
    alphas_cumprod: Tensor
    device: torch.device

    def adapters(self, enabled: bool) -> contextlib.AbstractContextManager:
        """Run ``unet`` with the peft adapters on (psi) or off (the pretrained prior)."""

    def tuner_layers(self) -> list:
        """peft's adapter-carrying layers of ``unet``."""

    def unet_forward(self, x_t: Tensor, t: Tensor, emb: Tensor) -> Tensor:
        """The UNet's epsilon, float32, with whatever adapter state is set."""


def host_lacks(backbone) -> list[str]:
    """LoRAHost's members that ``backbone`` lacks, looked up as attributes. Not isinstance against a
    runtime-checkable Protocol: from Python 3.12 that reads members statically
    (inspect.getattr_static) and misses what nn.Module serves through __getattr__ (its buffers:
    ``alphas_cumprod``), so it refused every Stable Diffusion backbone."""
    members = set(LoRAHost.__annotations__) | {n for n, v in vars(LoRAHost).items()
                                                if callable(v) and not n.startswith("_")}
    return sorted(n for n in members if not hasattr(backbone, n))


class LoRAScore(ScoreModel):
    supports_joint = True

    def __init__(
        self,
        backbone: LoRAHost,
        representation,
        rank: int = DEFAULT_RANK,
        alpha: float | None = None,
        lr: float = DEFAULT_LR,
        target_modules: tuple[str, ...] | list[str] = TARGET_MODULES,
        adapter_name: str = "psi",
        **kwargs,
    ):
        super().__init__(backbone.alphas_cumprod, lr=lr, **kwargs)
        if self.jacobian_weight:
            raise ValueError(f"jacobian_weight={self.jacobian_weight}; valid for score_model=lora: 0 "
                             "(its DSM step has no Jacobian term)")
        from peft import LoraConfig

        if lacks := host_lacks(backbone):
            raise ValueError(f"score_model=lora needs a Stable Diffusion backbone (backbone=sd21|sd15|"
                             f"diffusers), not {type(backbone).__name__} (it has no {', '.join(lacks)})")
        hold(self, "backbone", backbone)  # a reference, not a submodule (see docstring)
        cam_dim = representation.cam_dim
        unet = backbone.unet
        if adapter_name in (getattr(unet, "peft_config", None) or {}):
            raise ValueError(f"backbone.unet already has an adapter named {adapter_name!r}")
        config = LoraConfig(
            r=rank, lora_alpha=alpha or rank, init_lora_weights=True,  # B = 0: psi = prior at init
            target_modules=list(target_modules),
        )
        with backbone.adapters(True):
            unet.add_adapter(config, adapter_name=adapter_name)
            unet.set_adapter(adapter_name)
        self.adapter_name, self.cam_dim = adapter_name, cam_dim
        self._lora = {n: p for n, p in unet.named_parameters() if f".{adapter_name}." in n}
        if not self._lora:
            raise ValueError(f"no UNet module matches target_modules={list(target_modules)}")
        for p in self._lora.values():
            p.data = p.data.float()
        backbone.adapter_parameters.extend(self._lora.values())
        # SD's time embedding width (1280 for SD 1.x / 2.x) = 4 x block_out_channels[0]
        time_dim = unet.time_embedding.linear_2.out_features
        self.camera = nn.Sequential(nn.Linear(cam_dim, time_dim), nn.SiLU(), nn.Linear(time_dim, time_dim))
        nn.init.zeros_(self.camera[2].weight)
        nn.init.zeros_(self.camera[2].bias)
        self.camera.to(backbone.device)
        self._cam_emb: Tensor | None = None
        self._hook = unet.time_embedding.register_forward_hook(self._add_camera)
        # joint_eps: a (N,) 0/1 mask of psi rows zeroes every LoRA branch on the prior rows
        # (hooks on each lora_B, registered at the first joint call: the eager path never has them)
        self._row_mask: Tensor | None = None
        self._mask_hooks: list | None = None

    @classmethod
    def check_config(cls, cfg, key):
        super().check_config(cfg, key)
        checks.number(cfg, "rank", f"{key}.rank", lo=1, integer=True)
        checks.number(cfg, "alpha", f"{key}.alpha", lo=0.0, lo_open=True, optional=True)
        checks.require(float(cfg.get("jacobian_weight", 0.0)) == 0.0, f"{key}.jacobian_weight",
                       cfg.get("jacobian_weight"), "0 for score_model=lora (its DSM step has no Jacobian term)")

    def _add_camera(self, module, inputs, out: Tensor) -> Tensor:
        return out if self._cam_emb is None else out + self._cam_emb.to(out.dtype)

    def _mask_rows(self, module, inputs, out: Tensor) -> Tensor | None:
        m = self._row_mask
        return None if m is None else out * m.view(-1, *([1] * (out.ndim - 1))).to(out.dtype)

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        self.backbone.graphs.clear()  # the camera MLP may have new storages
        return self

    def eps(self, x_t: Tensor, t: Tensor, cam: Tensor | None, emb: Tensor | None = None) -> Tensor:
        """e_psi(x_t; y, c): (B, 4, h, w), (B,), (B, 16) or None (null camera), (B, L, D)."""
        if emb is None:
            raise ValueError("LoRAScore.eps needs the text embedding emb (B, L, D)")
        if cam is None:
            cam = torch.zeros(x_t.shape[0], self.cam_dim, device=x_t.device)
        cam = cam.to(x_t.device, torch.float32)
        if self.backbone.fast and not torch.is_grad_enabled():
            return self.backbone.graphs.forward("psi", self._eps, (x_t, t, cam, emb))
        return self._eps(x_t, t, cam, emb)

    def _eps(self, x_t: Tensor, t: Tensor, cam: Tensor, emb: Tensor, psi_rows: Tensor | None = None) -> Tensor:
        """The UNet with adapters on and the camera added; psi_rows (N,) 0/1 masks both per row."""
        self._cam_emb = self.camera(cam)
        emb = self.backbone.with_psi_camera(emb, cam, psi_rows)  # MVDream: its native camera MLP too
        if psi_rows is not None:
            if self._mask_hooks is None:
                self._mask_hooks = [layer.lora_B[self.adapter_name].register_forward_hook(self._mask_rows)
                                    for layer in self.backbone.tuner_layers()
                                    if self.adapter_name in getattr(layer, "lora_B", {})]
                if not self._mask_hooks:
                    raise RuntimeError("joint_eps: no LoRA layer of psi found to mask")
            self._cam_emb = self._cam_emb * psi_rows[:, None]
            self._row_mask = psi_rows
        try:
            with self.backbone.adapters(True):
                if self.backbone.unet.active_adapters != [self.adapter_name]:
                    self.backbone.unet.set_adapter(self.adapter_name)
                return self.backbone.unet_forward(x_t, t, emb)
        finally:
            self._cam_emb = self._row_mask = None

    def joint_eps(self, x_t: Tensor, t: Tensor, emb: Tensor, cam: Tensor, psi_rows: Tensor,
                  graph: bool = True) -> Tensor:
        """One UNet call over rows of the prior and of psi: x_t (N, 4, h, w), t (N,), emb (N, L, D),
        cam (N, 16) (read on psi rows only), psi_rows (N,) 1 for psi, 0 for the pretrained prior.

        A prior row equals ``backbone.predict_eps`` (every LoRA branch and the camera times 0), a
        psi row equals ``eps``. Differentiable in x_t when it requires grad (SIM); graph=False
        keeps it eager (a double backward, SIM's reward term)."""
        inputs = (x_t, t, cam.to(x_t.device, torch.float32), emb, psi_rows.to(x_t.device, torch.float32))
        if self.backbone.fast and graph:
            if torch.is_grad_enabled() and x_t.requires_grad:
                return self.backbone.graphs.with_input_grad("joint_grad", self._eps, inputs)
            if not torch.is_grad_enabled():
                return self.backbone.graphs.forward("joint", self._eps, inputs)
        return self._eps(*inputs)

    def trainable_parameters(self) -> list[nn.Parameter]:
        # peft flips requires_grad with the adapter state (see StableDiffusion._set_adapters)
        return list(self._lora.values()) + list(self.camera.parameters())

    def _dsm_loss(self, x_t: Tensor, t: Tensor, eps: Tensor, cam: Tensor, emb: Tensor) -> Tensor:
        pred = self._eps(x_t, t, cam.to(x_t.device, torch.float32), emb)  # float32 (unet_forward)
        return ((pred - eps) ** 2).flatten(1).sum(1).mean()

    def fit_step(self, x: Tensor, views, generator: torch.Generator, emb: Tensor | None = None,
                 p_drop: float = 0.0) -> dict[str, float]:
        """ScoreModel's DSM step; fast path: forward + backward replayed from a CUDA graph.
        A step with a non-finite loss or gradient is skipped (module docstring)."""
        if emb is None:
            raise ValueError("LoRAScore.fit_step needs the text embedding emb (B, L, D)")
        opt, params = self.optimizer, self.trainable_parameters()
        total, skipped = 0.0, 0
        for _ in range(self.steps_per_update):
            x_t, t, eps, cam = self.dsm_sample(x, views, generator, p_drop)
            if self.backbone.fast:
                loss = self.backbone.graphs.train_step("psi_dsm", self._dsm_loss, (x_t, t, eps, cam, emb), params)
            else:
                opt.zero_grad(set_to_none=True)
                loss = self._dsm_loss(x_t, t, eps, cam, emb)
                loss.backward()
            value, norm = torch.stack([loss.detach().float(), _grad_norm(params)]).tolist()  # one sync
            if math.isfinite(value) and math.isfinite(norm):
                opt.step()
            else:
                skipped += 1
            total += value
        return {"psi_loss": total / self.steps_per_update, "psi_skipped": float(skipped)}

    def get_extra_state(self):
        state = super().get_extra_state()
        state["lora"] = {n: p.detach().cpu().clone() for n, p in self._lora.items()}
        return state

    def set_extra_state(self, state) -> None:
        with torch.no_grad():
            for n, v in (state or {}).get("lora", {}).items():
                self._lora[n].copy_(v)
        super().set_extra_state(state)


def _grad_norm(params: list[Tensor]) -> Tensor:
    """The 2-norm of all parameters' gradients, a 0-d float32 tensor on their device (no sync)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros((), device=params[0].device if params else None)
    get_total_norm = getattr(torch.nn.utils, "get_total_norm", None)  # torch >= 2.6
    if get_total_norm is not None:
        return get_total_norm(grads).float()
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))
