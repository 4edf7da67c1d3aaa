"""The README is a front door (<= 200 lines, the two commands first) and every link of the user
docs resolves inside a clone (nothing points at ../shared or outside the repository)."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
USER_DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
README_MAX_LINES = 200


def test_readme_is_a_front_door():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= README_MAX_LINES
    first = "\n".join(lines[:6])
    assert "make install demo" in first and "make install test" in first


def test_every_relative_link_resolves_inside_the_clone():
    broken = []
    for doc in USER_DOCS:
        for target in LINK.findall(doc.read_text()):
            if re.match(r"^[a-z]+://|^#|^mailto:", target):
                continue
            path = (doc.parent / target.split("#")[0]).resolve()
            if not path.is_relative_to(ROOT) or not path.exists():
                broken.append(f"{doc.relative_to(ROOT)}: {target}")
    assert not broken, broken


def test_user_docs_say_the_machine_not_the_process():
    """No words of the project's own process ("issue 12", "this CPU", "the lent H200")."""
    process = re.compile(r"\bissue \d+|\bthis (2-core )?CPU\b|\blent (H100|H200|NVIDIA)|\bthe lent\b", re.I)
    found = [f"{d.relative_to(ROOT)}: {m.group(0)}" for d in USER_DOCS for m in process.finditer(d.read_text())]
    assert not found, found


# A measured result of a run: a precision / rmse / janus rate / entropy figure, a mean, a time
# in ms or a memory in GB (the derivation of a constant, e.g. bytes of a data set, is not one).
MEASURED = re.compile(r"\b(precision|rmse|janus_rate|entropy)\s+(of\s+)?\d\.\d|\bmean \d\.\d"
                      r"|\b\d+(\.\d+)?\s?ms\b|\b\d+\.\d+\s?GB\b")


def test_no_measured_result_in_code_or_config_comments():
    """Numbers live in benchmarks/*.json; code and config say why and cite the study."""
    files = [*(ROOT / "src").rglob("*.py"), *(ROOT / "conf").rglob("*.yaml")]
    found = [f"{p.relative_to(ROOT)}:{i}: {line.strip()}" for p in files
             for i, line in enumerate(p.read_text().splitlines(), 1) if MEASURED.search(line)]
    assert not found, "\n".join(found)


def test_readme_groups_table_lists_every_option():
    """The README's config groups table names each group's options as conf/<group>/ holds them."""
    from src.configs import options

    rows = re.findall(r"^\| `(\w+)` \| `([^`]*)`", (ROOT / "README.md").read_text(), flags=re.M)
    assert len(rows) >= 8
    for group, listed in rows:
        assert set(listed.split()) == set(options(group)), group
