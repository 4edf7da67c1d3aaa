"""``python -m src.train --help`` (issue 30 item 9): the project's description, every config
group with its options as conf/ holds them, and the common commands, exit 0."""

import subprocess
import sys
from pathlib import Path

from src.configs import options

REPO = Path(__file__).resolve().parents[1]


def test_help_describes_the_groups_and_the_common_commands():
    out = subprocess.run([sys.executable, "-m", "src.train", "--help"], cwd=REPO, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    text = out.stdout
    assert text.startswith("Distillery: score distillation")
    for group in ("guidance", "representation", "backbone", "experiment"):
        assert f"\n{group}: {', '.join(sorted(options(group)))}\n" in text
    for command in ("python -m src.train --cfg job --resolve", "python -m src.train resume=RUN_DIR",
                    "hydra/launcher=submitit_local", "python scripts/sweep.py"):
        assert command in text
    assert "powered by Hydra" not in text  # Hydra's stock header is gone
