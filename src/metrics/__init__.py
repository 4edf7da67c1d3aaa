"""Metrics: exact ShapesWorld metrics (shapes.py); sweep-level metrics live in scripts/."""
