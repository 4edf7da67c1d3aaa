"""What is optimized. Each implements ``Representation`` (base.py)."""
from src.representations.base import RenderOutput, Representation

__all__ = ["Representation", "RenderOutput"]
