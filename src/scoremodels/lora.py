"""psi as LoRA on the backbone's own UNet (ProlificDreamer's VSD, ESD, Dive3D/SIM).

One UNet sits in memory: peft adapters are added to ``backbone.unet`` and switched on only
inside ``LoRAScore.eps``; the pretrained prior (``backbone.predict_eps``) runs with them off.
The camera enters as in threestudio's VSD: the flattened 4x4 camera-to-world matrix (16
numbers) through Linear-SiLU-Linear, added to the UNet's timestep embedding (a forward hook
on ``unet.time_embedding``, active on the LoRA branch only). The null camera (``cam=None``,
or camera dropout) is the zero matrix through the same MLP, as threestudio feeds it.

Initialization makes psi equal to the pretrained UNet at step 0 (ProlificDreamer starts psi
from the prior): LoRA's B matrices and the camera MLP's last layer start at zero.

Trainable state (LoRA weights + camera MLP, float32 even when the UNet is fp16, so AdamW's
updates are not lost to fp16 rounding) is saved with psi's state_dict; the UNet is not.
"""

from __future__ import annotations

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


class LoRAScore(ScoreModel):
    def __init__(
        self,
        backbone,
        representation,
        rank: int = DEFAULT_RANK,
        alpha: float | None = None,
        lr: float = DEFAULT_LR,
        target_modules: tuple[str, ...] | list[str] = TARGET_MODULES,
        adapter_name: str = "psi",
        **kwargs,
    ):
        super().__init__(backbone.alphas_cumprod, lr=lr, **kwargs)
        from peft import LoraConfig

        from src.backbones.sd import StableDiffusion

        if not isinstance(backbone, StableDiffusion):
            raise ValueError(f"score_model=lora needs a Stable Diffusion backbone (backbone=sd21|sd15|"
                             f"diffusers), not {type(backbone).__name__}")
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

    @classmethod
    def check_config(cls, cfg, key):
        super().check_config(cfg, key)
        checks.number(cfg, "rank", f"{key}.rank", lo=1, integer=True)
        checks.number(cfg, "alpha", f"{key}.alpha", lo=0.0, lo_open=True, optional=True)

    def _add_camera(self, module, inputs, out: Tensor) -> Tensor:
        return out if self._cam_emb is None else out + self._cam_emb.to(out.dtype)

    def eps(self, x_t: Tensor, t: Tensor, cam: Tensor | None, emb: Tensor | None = None) -> Tensor:
        """e_psi(x_t; y, c): (B, 4, h, w), (B,), (B, 16) or None (null camera), (B, L, D)."""
        if emb is None:
            raise ValueError("LoRAScore.eps needs the text embedding emb (B, L, D)")
        if cam is None:
            cam = torch.zeros(x_t.shape[0], self.cam_dim, device=x_t.device)
        self._cam_emb = self.camera(cam.to(x_t.device, torch.float32))
        try:
            with self.backbone.adapters(True):
                if self.backbone.unet.active_adapters != [self.adapter_name]:
                    self.backbone.unet.set_adapter(self.adapter_name)
                return self.backbone.unet_forward(x_t, t, emb)
        finally:
            self._cam_emb = None

    def trainable_parameters(self) -> list[nn.Parameter]:
        # peft flips requires_grad with the adapter state (see StableDiffusion._set_adapters)
        return list(self._lora.values()) + list(self.camera.parameters())

    def get_extra_state(self):
        state = super().get_extra_state()
        state["lora"] = {n: p.detach().cpu().clone() for n, p in self._lora.items()}
        return state

    def set_extra_state(self, state) -> None:
        with torch.no_grad():
            for n, v in (state or {}).get("lora", {}).items():
                self._lora[n].copy_(v)
        super().set_extra_state(state)
