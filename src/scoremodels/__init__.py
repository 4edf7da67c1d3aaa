"""psi: the trainable score model of the *rendered* distribution (VSD, ESD, SIM).

Kinds (``guidance.score_model.kind``): ``analytic`` (closed form, affine toy),
``mlp`` (particles), ``unet`` (image backbones, trained from scratch) and
``lora`` (peft LoRA on the Stable Diffusion UNet). ``auto`` asks the backbone /
representation pair (see ``build_score_model``).
"""
from src.scoremodels.base import ScoreModel, build_score_model

__all__ = ["ScoreModel", "build_score_model"]
