"""Metrics the papers report, computed from finished runs (per run and per group of runs).

The exact ShapesWorld metrics of one run live beside the prior they measure
(src/backbones/shapes_metrics.py).
"""
