# Distillery: every command a user or CI needs. `make help` lists them.
PY      ?= .venv/bin/python
PIP     ?= .venv/bin/pip
# torch and torchvision are installed together, pinned: a torchvision built for another torch
# breaks diffusers' and peft's imports. On a CUDA machine the same pins come from the registry.
TORCH_PINS = torch==2.14.1 torchvision==0.29.1
STAMP   = .venv/.installed

.PHONY: help install demo test test-cuda test-slurm lint format toy-figures sweep report clean

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

test-slurm: install ## start a one-node Slurm, run the cluster tests, stop it
	bash scripts/slurm_local.sh start
	HF_HUB_OFFLINE=1 WANDB_MODE=offline $(PY) -m pytest -q -m slurm -o addopts='' ; rc=$$?; \
	  bash scripts/slurm_local.sh stop; exit $$rc

lint: install ## ruff
	$(PY) -m ruff check src tests scripts

format: install
	$(PY) -m ruff format src tests scripts

toy-figures: install ## ESD Fig. 3, SSD Fig. 7 and the 4-mode per-method panel into figures/
	$(PY) scripts/toy_figures.py --out figures

clean:
	rm -rf outputs multirun .pytest_cache
