"""Distillery: score distillation as one algebra of small parts.

Module map (docs/architecture.md, "Floors"):
  diffusion.py       noise-schedule math shared by every part (docs/methods.md, "Conventions")
  cameras.py         ViewBatch and view samplers (particle index, Gaussian code, orbit cameras)
  schedules.py       timestep rules (the `schedule` config group)
  backbones/         frozen priors: analytic mog2d / shapes, Stable Diffusion
  representations/   what is optimized: particles, affine, image, nerf, gaussians
  scoremodels/       psi, the score model of the rendered distribution (VSD, ESD, SIM)
  guidance/          the eight estimators G (docs/methods.md, "The methods")
  rewards/           differentiable rewards for Dive3D-style terms
  trainer.py         the single loop: render -> encode -> G -> step -> psi update
  metrics/           the papers' metric functions (over finished runs, never in the loop)
  studies/           what is made of finished runs: reports, evaluation, tables, results page
  train.py           Hydra entry point (`python -m src.train`)
"""
