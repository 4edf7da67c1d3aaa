# Distillery: every command a user or CI needs. `make help` lists them.
PY      ?= .venv/bin/python
PIP     ?= .venv/bin/pip
# torch and torchvision are installed together, pinned: a torchvision built for another torch
# breaks diffusers' and peft's imports. On a CUDA machine the same pins come from the registry.
TORCH_PINS = torch==2.14.1 torchvision==0.29.1
STAMP   = .venv/.installed

.PHONY: help install demo test test-cuda test-slurm lint format toy-figures sweep report evaluate clean prior prior-multiview prior-multiview-check prior-quality

help:
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(STAMP): pyproject.toml
	python3 -m venv .venv
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH_PINS)
	$(PIP) install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) ## create .venv with pinned torch and the project (editable)

demo: install ## run the default job (ShapesWorld + NeRF + SDS, CPU, a few minutes)
	$(PY) -m src.train hydra.run.dir=outputs/demo

test: install ## the default test suite (CPU, no GPU, no cluster)
	HF_HUB_OFFLINE=1 WANDB_MODE=offline $(PY) -m pytest -q

test-cuda: install ## GPU tests (on a CUDA machine)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -m cuda -o addopts=''


lint: install ## ruff
	$(PY) -m ruff check src tests scripts hydra_plugins

format: install
	$(PY) -m ruff format src tests scripts hydra_plugins

toy-figures: install ## ESD Fig. 3, SSD Fig. 7 and the 4-mode per-method panel into figures/
	$(PY) scripts/toy_figures.py --out figures

clean:
	rm -rf outputs multirun .pytest_cache

# --- the learned prior (docs/learned_prior.md): a latent diffusion model of ShapesWorld in SD's layout ---
# PRIOR_DEVICE=cuda trains on a GPU (the same recipe); training state in outputs/prior/ (resumable)
PRIOR_DEVICE ?= cpu
prior: install ## train models/shapes_ldm and its front-biased Janus twin (scripts/train_prior.py; resumable)
	$(PY) scripts/train_prior.py --out models/shapes_ldm --device $(PRIOR_DEVICE)
	$(PY) scripts/train_prior.py --out models/shapes_ldm_janus_front --device $(PRIOR_DEVICE) experiment=shapes_janus_front

# The multi-view twin (docs/mvdream.md "A learned MVDream of ShapesWorld"): models/shapes_ldm fine-tuned
# as MVDream fine-tuned SD 2.1 (camera MLP + cross-view attention), at FINETUNE_LR
# (scripts/train_prior_multiview.py). 6000 steps of 16 sets of 4 views (384k views, 1.5x the
# 8000 x 32 images of shapes_ldm's recipe: every set is 4 images).
prior-multiview: install ## train models/shapes_mvdream from models/shapes_ldm (scripts/train_prior.py --multiview; resumable)
	$(PY) scripts/train_prior.py --multiview --init-from models/shapes_ldm --unet-steps 6000 --unet-batch 64 --out models/shapes_mvdream --device $(PRIOR_DEVICE)

prior-multiview-check: install ## does models/shapes_mvdream use its cameras and views? -> benchmarks/shapes_mvdream_check.{json,md}
	$(PY) scripts/prior_multiview_check.py models/shapes_mvdream --out benchmarks/shapes_mvdream_check

prior-quality: install ## sample quality of models/shapes_ldm -> benchmarks/shapes_ldm_quality.{json,md}
	$(PY) scripts/prior_quality.py models/shapes_ldm --out benchmarks/shapes_ldm_quality

# --- sweeps (sweeps/*.yaml, scripts/sweep.py, scripts/evaluate.py, scripts/report.py; README "Sweeps") ---
SWEEP    ?= esd_lambda
LAUNCHER ?= basic
# The local launchers run the sweep file's `toy:` settings unless TOY=0 (the studies need SD
# weights and a GPU); slurm_a100 runs the study unless TOY=1.
TOY      ?= $(if $(filter slurm_a100,$(LAUNCHER)),0,1)
# Extra overrides, e.g. ARGS="hydra.launcher.partition=gpu hydra.launcher.account=lab"
ARGS     ?=
# Metrics over a finished sweep (scripts/evaluate.py): which ones (all | a comma list) and the
# weights (real: from disk; random: test weights, numbers that only test the plumbing).
METRICS  ?=
WEIGHTS  ?=
DEVICE   ?=
METRIC_ARGS = $(if $(METRICS),--metrics $(METRICS)) $(if $(WEIGHTS),--weights $(WEIGHTS)) $(if $(DEVICE),--device $(DEVICE))

sweep: install ## make sweep SWEEP=esd_lambda LAUNCHER=basic|submitit_local|slurm_a100 [TOY=0|1] [ARGS=...]
	$(PY) scripts/sweep.py $(SWEEP) --launcher $(LAUNCHER) $(if $(filter 1,$(TOY)),--toy) $(ARGS)

# The directory `make sweep` with the same SWEEP / LAUNCHER / TOY writes (src/sweeps.py:
# default_sweep_dir): multirun/<sweep>, or multirun/<sweep>_toy for the toy settings.
SWEEP_DIR ?= multirun/$(SWEEP)$(if $(filter 1,$(TOY)),_toy)

report: install ## make report SWEEP_DIR=multirun/esd_lambda_toy [WEIGHTS=random] [METRICS=...] -> report.md/.csv/.png + grid.png there (default dir: what `make sweep` with the same SWEEP/TOY writes)
	$(PY) scripts/report.py $(SWEEP_DIR) $(METRIC_ARGS)

evaluate: install ## make evaluate SWEEP_DIR=multirun/<sweep> [WEIGHTS=random] [METRICS=...] [DEVICE=cpu|cuda:N] -> evaluation.json, the report, a W&B summary run
	$(PY) scripts/evaluate.py $(SWEEP_DIR) $(METRIC_ARGS)

# The session fixture of tests/test_slurm.py installs slurm-wlm + munge if missing (root,
# apt-get), starts the one-node cluster unless it already runs, and stops what it started.
test-slurm: install ## cluster tests on a one-node Slurm started here (root), a few minutes
	HF_HUB_OFFLINE=1 WANDB_MODE=offline $(PY) -m pytest -q -m slurm -o addopts='-ra' tests/test_slurm.py
