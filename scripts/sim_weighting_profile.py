"""Thin entry: src/studies/diagnostics/sim_weighting_profile.py (its docstring has the usage)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from src.studies.diagnostics.sim_weighting_profile import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
