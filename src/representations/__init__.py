"""What is optimized. Each implements ``Representation`` (base.py)."""
from src.representations.base import Representation, RenderOutput

__all__ = ["Representation", "RenderOutput"]
