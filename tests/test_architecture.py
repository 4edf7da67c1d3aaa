"""The layering of docs/architecture.md ("Floors") holds over every import in src/."""

from __future__ import annotations

import ast
import fnmatch
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"


def floors() -> dict[str, int]:
    """{file pattern relative to src/: floor}, read from the table in docs/architecture.md."""
    table = {}
    for line in (ROOT / "docs" / "architecture.md").read_text().splitlines():
        m = re.match(r"^\|\s*(\d+)\s*\|(.*?)\|", line)
        if m:
            for pattern in re.findall(r"`([^`]+)`", m.group(2)):
                table[pattern] = int(m.group(1))
    return table


def floor_of(rel: str, table: dict[str, int]) -> int:
    hits = [f for pattern, f in table.items() if fnmatch.fnmatchcase(rel, pattern)]
    assert hits, f"src/{rel} is on no floor of docs/architecture.md"
    return max(hits)  # the most specific entries are listed explicitly


def resolve(module: str) -> Path | None:
    path = ROOT / module.replace(".", "/")
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.exists():
            return candidate
    return None


def imports(path: Path) -> set[Path]:
    """Files of src/ that ``path`` imports (also inside functions), minus TYPE_CHECKING ones."""
    tree = ast.parse(path.read_text())
    skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
            and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")
            for n in ast.walk(node)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
        for name in names:
            if name == "src" or name.startswith("src."):
                target = resolve(name)
                if target is not None and target != path:
                    found.add(target)
    # `from src.x import y` also resolves src.x (a package __init__): keep the most specific
    return {p for p in found if not (p.name == "__init__.py" and any(q.parent == p.parent and q != p for q in found))}


def graph() -> dict[Path, set[Path]]:
    return {p: imports(p) for p in SRC.rglob("*.py")}


def test_no_file_imports_a_higher_floor():
    table = floors()
    assert table, "docs/architecture.md has no floor table"
    up = []
    for src, targets in graph().items():
        f = floor_of(str(src.relative_to(SRC)), table)
        for dst in targets:
            g = floor_of(str(dst.relative_to(SRC)), table)
            if g > f:
                up.append(f"{src.relative_to(ROOT)} (floor {f}) imports {dst.relative_to(ROOT)} (floor {g})")
    assert not up, "\n".join(up)


def test_no_import_cycle():
    edges = graph()
    state: dict[Path, int] = {}  # 1 = on the stack, 2 = done
    stack: list[Path] = []

    def visit(node: Path) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in edges.get(node, ()):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                raise AssertionError(" -> ".join(str(p.relative_to(ROOT)) for p in cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in edges:
        if node not in state:
            visit(node)


def test_psi_imports_no_prior_and_no_representation():
    """psi (src/scoremodels/) gets the prior and the representation it serves from its caller:
    LoRA's UNet (``LoRAHost``) and the affine toy's closed form (``Representation.gaussian``)."""
    below = [SRC / "backbones", SRC / "representations"]
    bad = [f"{src.relative_to(ROOT)} imports {dst.relative_to(ROOT)}"
           for src, targets in graph().items() if (SRC / "scoremodels") in src.parents
           for dst in targets if any(d in dst.parents for d in below)]
    assert not bad, "\n".join(bad)
