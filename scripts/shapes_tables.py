"""The exact ShapesWorld tables of finished sweeps: src/studies/shapes_tables.py (usage there)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from src.studies.shapes_tables import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
