"""Holding a shared, frozen object inside an ``nn.Module`` without registering it.

A guidance holds the backbone, psi's LoRA holds the backbone, Stable Diffusion holds its UNet
and VAE: registered as submodules they would enter every ``state_dict`` (multi-GB
checkpoints), ``parameters()`` and ``.to(dtype)`` (an fp16 UNet up-cast). ``hold`` stores a
plain attribute instead: one spelling for the idea everywhere.
"""

from __future__ import annotations

from torch import nn


def hold(owner: nn.Module, name: str, obj) -> None:
    """``owner.name = obj`` as a plain attribute: not a submodule, buffer or parameter."""
    object.__setattr__(owner, name, obj)
