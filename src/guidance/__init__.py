"""Every estimator of docs/methods.md (and CSD), each a short module over shared parts (base.py)."""
from src.guidance.base import Guidance, GuidanceOutput

__all__ = ["Guidance", "GuidanceOutput"]
