"""A ShapesWorld NeRF run on the GPU repeats bit for bit with ``trainer.deterministic=true``.

Run on the device machine: ``pytest -m cuda tests/test_determinism_cuda.py``. Two processes, same
seed: the final loss and every metric must be equal. Without it (torch's default kernels) the
same seed measured on the lent H200 differs after 50 steps and ends at precision 0.13 / 0.00 /
0.63 in three runs (src/trainer.py: set_determinism).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


def test_same_seed_same_gpu_run(tmp_path):
    runs = []
    for name in ("a", "b"):
        run = tmp_path / name
        subprocess.run([sys.executable, "-m", "src.train", "experiment=shapes_modes", "guidance=vsd", "seed=7",
                        "device=cuda", "trainer.max_steps=60", "trainer.export=false", "trainer.progress=false",
                        "trainer.deterministic=true", f"hydra.run.dir={run}"],
                       cwd=REPO, check=True, capture_output=True)
        runs.append(json.loads((run / "metrics.json").read_text()))
        info = json.loads((run / "run_info.json").read_text())
        assert info["device"] == "cuda" and info["gpu"] == torch.cuda.get_device_name()  # recorded with the run
    for key in ("final_loss", "rmse", "precision"):
        assert runs[0][key] == runs[1][key], key
