"""Frozen diffusion priors. Each implements ``Backbone`` (base.py)."""
from src.backbones.base import Backbone, Conditioning

__all__ = ["Backbone", "Conditioning"]
