"""psi for pixel-space image backbones (ShapesWorld): a tiny camera-conditioned UNet, from scratch.

A diffusers ``UNet2DModel`` (no cross-attention: psi models the renders of *one* run, whose
prompt is fixed, so text conditioning would be a constant) with ``class_embed_type="identity"``:
the camera (16-d camera-to-world, or whatever ``ViewBatch.cam`` holds) goes through a small
MLP whose output is added to the timestep embedding, as for the LoRA psi. Null camera = the
zero vector through that MLP (``cam=None`` or camera dropout).

Size: two resolution levels of 32 / 64 channels, one ResNet block each, no attention:
~0.5 M parameters, a few ms per CPU forward at 32 px batch 1 (tests/test_unet_score.py).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from src.scoremodels.base import ScoreModel

DEFAULT_LR = 1e-3  # from scratch: ProlificDreamer's 1e-4 is for a pretrained LoRA
DEFAULT_CHANNELS = (32, 64)
NORM_GROUPS = 8


class UNetScore(ScoreModel):
    """e_psi(x_t; c) for images x (B, C, H, W) or channels-last (B, H, W, C)."""

    def __init__(
        self,
        alphas_cumprod: Tensor,
        in_channels: int = 3,
        sample_size: int = 32,
        cam_dim: int = 16,
        channels: tuple[int, ...] | list[int] = DEFAULT_CHANNELS,
        layers_per_block: int = 1,
        attention: bool = False,
        lr: float = DEFAULT_LR,
        p_drop: float = 0.1,
        **kwargs,
    ):
        super().__init__(alphas_cumprod, lr=lr, p_drop=p_drop, **kwargs)
        from diffusers import UNet2DModel

        channels = tuple(channels)
        down = ["DownBlock2D"] * len(channels)
        up = ["UpBlock2D"] * len(channels)
        if attention:  # self-attention at the coarsest level only
            down[-1], up[0] = "AttnDownBlock2D", "AttnUpBlock2D"
        time_dim = 4 * channels[0]  # diffusers' default time_embed_dim
        self.in_channels, self.cam_dim = in_channels, cam_dim
        self.net = UNet2DModel(
            sample_size=sample_size, in_channels=in_channels, out_channels=in_channels,
            block_out_channels=channels, down_block_types=tuple(down), up_block_types=tuple(up),
            layers_per_block=layers_per_block, norm_num_groups=NORM_GROUPS,
            class_embed_type="identity", attention_head_dim=8,
        )
        self.camera = nn.Sequential(nn.Linear(cam_dim, time_dim), nn.SiLU(), nn.Linear(time_dim, time_dim))

    @classmethod
    def for_backbone(cls, backbone, representation=None, **cfg) -> UNetScore:
        if getattr(backbone, "space", None) == "latent":
            raise ValueError("score_model.kind=unet is for pixel backbones; use kind=lora (or auto) with SD")
        if cfg.get("lr") is None:
            cfg["lr"] = DEFAULT_LR
        res = getattr(backbone, "resolution", None) or getattr(representation, "resolution", None)
        if res is not None:
            cfg.setdefault("sample_size", int(res))
        cfg.setdefault("in_channels", int(getattr(backbone, "channels", 3)))
        cfg.setdefault("cam_dim", getattr(representation, "cam_dim", None) or 16)
        return cls(backbone.alphas_cumprod, **cfg)

    def _channels_last(self, x: Tensor) -> bool:
        return x.shape[-1] == self.in_channels and x.shape[1] != self.in_channels

    def eps(self, x_t: Tensor, t: Tensor, cam: Tensor | None, emb: Tensor | None = None) -> Tensor:
        """(B, C, H, W) or (B, H, W, C), (B,), (B, cam_dim) or None -> like x_t. emb is unused."""
        last = self._channels_last(x_t)
        x = x_t.permute(0, 3, 1, 2) if last else x_t
        B = x.shape[0]
        if cam is None:
            cam = torch.zeros(B, self.cam_dim, device=x.device, dtype=x.dtype)
        dtype = self.camera[0].weight.dtype
        c = self.camera(cam.to(x.device, dtype))
        out = self.net(x.to(dtype), t.to(x.device), class_labels=c).sample.to(x_t.dtype)
        return out.permute(0, 2, 3, 1) if last else out
