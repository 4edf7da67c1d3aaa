"""The studies floor: what is made of finished runs, never imported by the trainer.

Reading runs (runs.py), the one table writer (tables.py), a sweep's report and its figures
(report.py, figures.py), the papers' metrics over a sweep (evaluate.py), the ShapesWorld tables
(shapes_tables.py), the toy claims (toy_claims.py), the results page generated from
benchmarks/*.json (results.py) and one-question diagnostics (diagnostics/). Each study names its
sweep file (sweeps/), its preset (conf/experiment/) and its benchmarks/<name>.{json,md}; its
command-line entry is a thin script in scripts/. Runs are launched only by the sweep machinery
(src/sweeps.py, scripts/sweep.py and its launchers).
"""
