"""The fast path's VAE encoder: the same function as diffusers' modules, other kernels.

Why: in a profile of a fast 64 px SDS step the VAE encode + backward of the upsampled 512 px
render was most of the step's GPU time (docs/stable_diffusion.md, "Where the 64 px step goes"),
with two kernels that fit SD's shapes badly at batch 1:

- the mid block's single-head attention (head dim 512, 4096 tokens): PyTorch's SDPA has no flash
  kernel for head dim 512 and falls back to the memory-efficient kernel, whose backward is slow;
  diffusers' ``AttnProcessor`` computes the plain ``softmax(q k^T) v`` instead;
- GroupNorm's statistics: the native kernel reduces each (sample, group) row in one thread
  block, 32 blocks for batch 1 on a 132-SM GPU (``RowwiseMoments``); ``group_norm`` below
  computes them with ``torch.var_mean``.

The gain is smaller than the profile suggested (``scripts/bench_sd_gpu.py`` primitives
``vae_encode_backward_512_*`` in benchmarks/sd_gpu.json). ``group_norm`` is not everywhere
faster: in the UNet's forward + backward at batch 1 it is slower than the native kernel
(primitives ``unet_b1_fwd_bwd_*``), so the UNet keeps ``nn.GroupNorm``.

``accelerate(vae)`` switches an ``AutoencoderKL`` to both (its weights untouched); the eager
path keeps diffusers' modules and is the reference the tests compare with
(tests/test_sd_fast.py on the CPU, tests/test_sd_cuda.py on the GPU).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def group_norm(x: Tensor, num_groups: int, weight: Tensor | None, bias: Tensor | None, eps: float) -> Tensor:
    """``F.group_norm`` (float32 statistics, as the native half-precision kernel keeps them),
    for any memory format of ``x`` (N, C, *)."""
    N, C = x.shape[:2]
    acc = torch.promote_types(x.dtype, torch.float32)
    xg = x.to(acc).unflatten(1, (num_groups, C // num_groups))  # a view: channels-last stays so
    dims = tuple(range(2, xg.dim()))
    var, mean = torch.var_mean(xg, dim=dims, keepdim=True, correction=0)
    y = ((xg - mean) * torch.rsqrt(var + eps)).flatten(1, 2)
    if weight is not None:
        shape = (1, C) + (1,) * (x.dim() - 2)
        y = y * weight.to(acc).view(shape) + bias.to(acc).view(shape)
    return y.to(x.dtype)


class WideGroupNorm(nn.GroupNorm):
    """nn.GroupNorm computed by ``group_norm`` (same parameters, same state_dict)."""

    def forward(self, x: Tensor) -> Tensor:
        return group_norm(x, self.num_groups, self.weight, self.bias, self.eps)


def accelerate(vae: nn.Module, channels_last: bool = True) -> nn.Module:
    """The fast path's VAE, in place: plain attention, ``WideGroupNorm``, channels-last convs."""
    from diffusers.models.attention_processor import AttnProcessor

    vae.set_attn_processor(AttnProcessor())
    widen_group_norms(vae)
    if channels_last:
        vae.to(memory_format=torch.channels_last)
    return vae


def widen_group_norms(model: nn.Module) -> nn.Module:
    """Every nn.GroupNorm inside ``model`` replaced by a frozen WideGroupNorm, in place."""
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if type(child) is nn.GroupNorm:
                wide = WideGroupNorm(child.num_groups, child.num_channels, child.eps, child.affine)
                wide.load_state_dict(child.state_dict())
                if child.affine:
                    wide.to(device=child.weight.device, dtype=child.weight.dtype)
                wide.requires_grad_(False)
                setattr(module, name, wide)
    return model

