"""psi: the trainable score model of the *rendered* distribution (VSD, ESD, SIM).

The ``score_model`` config group (conf/score_model/): ``lora`` (peft LoRA on the Stable
Diffusion UNet), ``unet`` (pixel priors, from scratch), ``mlp`` (2-D toys, from scratch) and
``analytic`` (closed form, the affine toy). Each is ``_partial_``: the guidance completes it
with the backbone and the representation.
"""
from src.scoremodels.base import ScoreModel

__all__ = ["ScoreModel"]
