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


def room_of(path: Path) -> str:
    """The room a file of src/ belongs to in the import picture: its top-level folder or itself."""
    rel = path.relative_to(SRC)
    return rel.parts[0] if len(rel.parts) > 1 else rel.name


def test_no_arrow_between_rooms_runs_back_up():
    """Folders count as one room each (a reader sees `studies/`, `metrics/`, `export/`): the
    graph of rooms has no cycle, so no arrow of the picture runs back up (a cycle of files is
    caught above; this catches two folders importing each other through different files)."""
    edges: dict[str, set[str]] = {}
    for src, targets in graph().items():
        edges.setdefault(room_of(src), set()).update(room_of(t) for t in targets if room_of(t) != room_of(src))
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                raise AssertionError("rooms import each other: " + " -> ".join(stack[stack.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)


def test_studies_are_the_top_floor_below_the_entries():
    """Nothing below the studies imports them (the trainer, the metrics, the parts)."""
    table = floors()
    studies = floor_of("studies/report.py", table)
    assert all(floor_of(f, table) > studies for f in ("train.py", "reexport.py", "hooks.py"))
    below = [f"{src.relative_to(ROOT)} imports {dst.relative_to(ROOT)}"
             for src, targets in graph().items() if room_of(src) != "studies"
             and floor_of(str(src.relative_to(SRC)), table) < studies
             for dst in targets if room_of(dst) == "studies"]
    assert not below, below


def code_files() -> list[Path]:
    return sorted([*SRC.rglob("*.py"), *(ROOT / "scripts").glob("*.py"), *(ROOT / "hydra_plugins").rglob("*.py")])


def test_one_table_writer():
    """Every Markdown table is written by src/studies/tables.py (a table rule `|---` nowhere else)."""
    writer = SRC / "studies" / "tables.py"
    others = [str(p.relative_to(ROOT)) for p in code_files() if p != writer and re.search(r"\|-{3}", p.read_text())]
    assert not others, f"write Markdown tables with src/studies/tables.py: markdown_table, not in {others}"


# The one way to run many jobs: the sweep machinery (scripts/sweep.py -> one Hydra multirun per
# grid, src/sweeps.py) and its launchers (hydra_plugins/distillery_launchers/: the launchers, and
# the isolated worker a GPU bench runs its timing jobs in). A study or bench that launches
# training runs does it as a Hydra multirun through a launcher.
JOB_RUNNERS = {"scripts/sweep.py", "hydra_plugins/distillery_launchers/launchers.py",
               "hydra_plugins/distillery_launchers/isolation.py"}
POOLS = re.compile(r"ProcessPoolExecutor|ThreadPoolExecutor|multiprocessing|\bPool\(|subprocess\.Popen")
STARTS_TRAINING = re.compile(r"""["']src\.train["']""")


def test_one_job_runner():
    """No pool of worker processes anywhere but the launchers' package, and a file that starts
    `python -m src.train` itself runs a Hydra multirun through a launcher (`hydra/launcher=`) or
    scripts/sweep.py (tests start single runs to check their behaviour)."""
    pools, starters = [], []
    for p in code_files():
        rel, text = str(p.relative_to(ROOT)), p.read_text()
        if rel in JOB_RUNNERS:
            continue
        if POOLS.search(text):
            pools.append(rel)
        if STARTS_TRAINING.search(text) and "subprocess" in text and "hydra/launcher=" not in text:
            starters.append(rel)
    assert not pools, f"worker pools outside the launchers' package: {pools}"
    assert not starters, f"files starting src.train processes outside the sweep machinery: {starters}"


def test_psi_imports_no_prior_and_no_representation():
    """psi (src/scoremodels/) gets the prior and the representation it serves from its caller:
    LoRA's UNet (``LoRAHost``) and the affine toy's closed form (``Representation.gaussian``)."""
    below = [SRC / "backbones", SRC / "representations"]
    bad = [f"{src.relative_to(ROOT)} imports {dst.relative_to(ROOT)}"
           for src, targets in graph().items() if (SRC / "scoremodels") in src.parents
           for dst in targets if any(d in dst.parents for d in below)]
    assert not bad, "\n".join(bad)
