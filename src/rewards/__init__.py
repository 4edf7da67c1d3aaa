"""Differentiable rewards r(images, prompt) -> (B,) for Dive3D-style terms (reward group)."""
from src.rewards.base import Reward

__all__ = ["Reward"]
