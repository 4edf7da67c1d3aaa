"""psi for pixel-space image backbones (ShapesWorld): a tiny camera-conditioned UNet trained from
scratch (default), or the prior plus that UNet as a correction whose output convolution starts
at zero (``from_prior: true``, base.py).

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

from src import checks
from src.scoremodels.base import ScoreModel

DEFAULT_LR = 1e-3  # from scratch: ProlificDreamer's 1e-4 is for a pretrained LoRA
DEFAULT_CHANNELS = (32, 64)
NORM_GROUPS = 8


class UNetScore(ScoreModel):
    """e_psi(x_t; c) for images x (B, C, H, W) in the backbone's (pixel) space."""

    def __init__(
        self,
        backbone,
        representation,
        channels: tuple[int, ...] | list[int] = DEFAULT_CHANNELS,
        layers_per_block: int = 1,
        attention: bool = False,
        lr: float = DEFAULT_LR,
        from_prior: bool = False,
        **kwargs,
    ):
        super().__init__(backbone.alphas_cumprod, lr=lr, prior=backbone if from_prior else None, **kwargs)
        if backbone.space != "pixel":
            raise ValueError(f"score_model=unet is for pixel priors; {type(backbone).__name__} is "
                             f"{backbone.space!r} (Stable Diffusion: score_model=lora)")
        from diffusers import UNet2DModel

        in_channels, sample_size, _ = backbone.x_shape()
        cam_dim = representation.cam_dim

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
        if from_prior:  # the correction starts at zero: psi = prior at step 0
            nn.init.zeros_(self.net.conv_out.weight)
            nn.init.zeros_(self.net.conv_out.bias)

    @classmethod
    def check_config(cls, cfg, key):
        super().check_config(cfg, key)
        ch = list(cfg.get("channels") or [])
        checks.require(len(ch) > 0 and all(int(c) % NORM_GROUPS == 0 and int(c) > 0 for c in ch),
                       f"{key}.channels", ch, f"a non-empty list of multiples of {NORM_GROUPS}")
        checks.number(cfg, "layers_per_block", f"{key}.layers_per_block", lo=1, integer=True)

    def eps(self, x_t: Tensor, t: Tensor, cam: Tensor | None, emb: Tensor | None = None) -> Tensor:
        """(B, C, H, W), (B,), (B, cam_dim) or None, emb (B, *E) -> (B, C, H, W). The UNet sees no
        text (psi models the renders of one run, whose prompt is fixed); the prior reads emb."""
        x = x_t
        B = x.shape[0]
        if cam is None:
            cam = torch.zeros(B, self.cam_dim, device=x.device, dtype=x.dtype)
        dtype = self.camera[0].weight.dtype
        c = self.camera(cam.to(x.device, dtype))
        out = self.net(x.to(dtype), t.to(x.device), class_labels=c).sample.to(x_t.dtype)
        return self.with_prior(out, x_t, t, emb)
