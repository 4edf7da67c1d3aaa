"""The papers' toy claims: src/studies/toy_claims.py (usage there)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from src.studies.toy_claims import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
