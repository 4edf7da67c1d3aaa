"""Metrics over finished runs (DESIGN.md "Metrics"): never inside the training loop.

Per run, from its turntable renders (``frames.py``): CLIP distance to the prompt
(``clip.py``), IQ / IV / IG (``inception.py``). Per group of runs (one setting, several
seeds): LPIPS-D (``perceptual.py``), CLIP-D (``clip.py``), Chamfer-D (``chamfer.py``), FID /
KID against samples of the prior (``inception.py``), distinct modes and mode entropy
(``modes.py``). ``evaluate.py`` runs them over a sweep directory; ``models.py`` loads the
networks they need (from disk through src/weights.py, or random ones for tests).
The exact per-run ShapesWorld metrics stay with the prior (src/backbones/shapes_metrics.py).
"""
