"""Time a run's side work beside its training (issue 30 item 6): validation grids, the final
evaluation, the export (mesh, turntable) and loss.png, by wrapping those methods with a clock.

    python scripts/bench_run_outputs.py [--label NAME] [--out benchmarks/run_outputs.json] [overrides ...]

Default job: the default config (SDS, NeRF, ShapesWorld, CPU) for 30 steps. Works on any
revision of the trainer that has these methods (to time the code before and after a change:
PYTHONPATH=<the other checkout> python scripts/bench_run_outputs.py --label before)."""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

DEFAULT = ["trainer.max_steps=30", "trainer.progress=false"]


def clocked(totals: dict, counts: dict, name: str, fn):
    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            totals[name] += time.perf_counter() - t0
            counts[name] += 1
    return wrapper


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--label", default="after")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("overrides", nargs="*")
    args = p.parse_args(argv)
    import src.export.plots as plots
    import src.trainer as trainer
    from src.api import compose, train

    cfg = compose(DEFAULT + args.overrides)
    totals, counts = defaultdict(float), defaultdict(int)
    T = trainer.Trainer
    T.validation_grid = clocked(totals, counts, "validation_grids_s", T.validation_grid)
    T.evaluate = clocked(totals, counts, "final_evaluation_s", T.evaluate)
    T.train_step = clocked(totals, counts, "train_steps_s", T.train_step)
    plots.plot_curves = clocked(totals, counts, "loss_png_s", plots.plot_curves)
    from hydra.utils import get_class

    rep = get_class(cfg.representation._target_)
    rep.export = clocked(totals, counts, "export_s", rep.export)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        metrics, _ = train(cfg, Path(tmp) / "run")
        files = sorted(str(q.relative_to(Path(tmp) / "run")) for q in (Path(tmp) / "run").rglob("*.png"))
        files += sorted(str(q.relative_to(Path(tmp) / "run")) for q in (Path(tmp) / "run").rglob("*.mp4"))
    row = {"label": args.label, "overrides": DEFAULT + args.overrides, "total_s": round(time.perf_counter() - t0, 1),
           **{k: round(v, 1) for k, v in sorted(totals.items())},
           "calls": dict(sorted(counts.items())), "files": files,
           "threads": torch.get_num_threads(), "python": platform.python_version(),
           "precision": metrics.get("precision")}
    print(json.dumps(row, indent=1))
    if args.out:
        rows = json.loads(args.out.read_text()) if args.out.exists() else {"rows": []}
        rows["rows"] = [r for r in rows["rows"] if r["label"] != args.label] + [row]
        rows["command"] = "python scripts/bench_run_outputs.py --label LABEL --out " + str(args.out)
        args.out.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
