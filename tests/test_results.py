"""The results page (docs/results.md) and the README's summary block are what
src/studies/results.py makes from benchmarks/*.json: a number can never drift from its measurement."""

import json
import shutil

import pytest

from src.studies import results


def test_results_page_and_readme_summary_are_not_stale():
    stale = [str(p) for p, text in results.generated().items() if not p.exists() or p.read_text() != text]
    assert not stale, f"regenerate with `python scripts/results.py`: {stale}"


def test_a_changed_measurement_makes_the_page_stale_and_a_new_json_joins_it(tmp_path, monkeypatch):
    """Edit one number of a copy of benchmarks/: the page changes there and the check fails;
    a JSON no section knows still appears (a generic table of its rows)."""
    bench = tmp_path / "benchmarks"
    shutil.copytree(results.BENCHMARKS, bench)
    data = json.loads((bench / "shapes_modes.json").read_text())
    data["table"]["fsd/nerf"]["distinct_modes"] = 3
    (bench / "shapes_modes.json").write_text(json.dumps(data))
    (bench / "new_study.json").write_text(json.dumps({"command": "python scripts/new.py",
                                                      "rows": [{"method": "sds", "score": 0.25}]}))
    page = (tmp_path / "results.md")
    page.write_text(results.RESULTS_MD.read_text())
    readme = tmp_path / "README.md"
    readme.write_text(results.README.read_text())
    monkeypatch.setattr(results, "BENCHMARKS", bench)
    monkeypatch.setattr(results, "RESULTS_MD", page)
    monkeypatch.setattr(results, "README", readme)
    monkeypatch.setattr(results, "REPO_ROOT", tmp_path)
    assert results.main(["--check"]) == 1
    assert results.main([]) == 0 and results.main(["--check"]) == 0
    text = page.read_text()
    assert "| fsd | 3 |" in text  # the summary's colours column follows the JSON
    assert "## new_study.json" in text and "| sds | 0.25 |" in text
    assert "| fsd | 3 |" in readme.read_text()


def test_readme_without_markers_is_refused(tmp_path):
    with pytest.raises(ValueError, match="lacks the markers"):
        results.readme_with_summary("# a readme without the block\n")
