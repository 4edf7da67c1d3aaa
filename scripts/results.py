"""The results page and the README's summary, generated from benchmarks/*.json:
src/studies/results.py (usage there)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from src.studies.results import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
