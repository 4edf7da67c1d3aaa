"""Mode coverage of every method on a multi-modal ShapesWorld prompt (issue 3).

For each method M and seed S it runs the documented command

    python -m src.train representation=nerf backbone=shapes guidance=M prompt="a cube" seed=S \
        hydra.run.dir=DIR [extra overrides]

("a cube" is a red, green, blue or yellow cube in the default world: 4 equally likely
modes), reads DIR/metrics.json's ``mode_id`` and ``precision``, and also the *nearest*
prompt class of the final NeRF (mean metric distance over the eval turntable, no
threshold: the colour the run drifted to even where it is not yet within the precision
threshold). Writes benchmarks/mode_table.{json,md}: per method the mode_ids and nearest
classes per seed, the number of distinct modes reached and the mean precision.

    python scripts/mode_table.py                          # 4 seeds x 7 methods, tuned defaults
    python scripts/mode_table.py --steps 200 --jobs 2 --prompt "a cone"
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from src.configs import guidance_names

ROOT = Path(__file__).resolve().parents[1]
METHODS = guidance_names()  # conf/guidance/: every estimator


def run_one(method: str, seed: int, args) -> dict:
    run_dir = Path(args.out) / f"{method}_s{seed}"
    cmd = [sys.executable, "-m", "src.train", "representation=nerf", f"backbone={args.backbone}",
           f"guidance={method}", f"prompt={args.prompt}", f"seed={seed}", f"hydra.run.dir={run_dir}",
           "trainer.progress=false", "trainer.export=false", f"num_threads={args.threads}"]
    if args.steps:
        cmd.append(f"trainer.max_steps={args.steps}")
    cmd += args.override
    t0 = time.time()
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    row = {"method": method, "seed": seed, "run_dir": str(run_dir), "wall_s": round(time.time() - t0, 1),
           "returncode": r.returncode}
    if r.returncode != 0:
        row["error"] = r.stderr[-2000:]
        return row
    m = json.loads((run_dir / "metrics.json").read_text())
    row.update(mode_id=int(m["mode_id"]), precision=float(m["precision"]), rmse=float(m["rmse"]),
               run_wall_s=float(m.get("wall_time_s", float("nan"))))
    try:
        row.update(nearest_class(run_dir))
    except Exception as e:  # noqa: BLE001 - a table row, not a crash of the whole table
        row.update(nearest_class=-1, nearest_name="?", nearest_dist=float("nan"), nearest_error=repr(e))
    return row


def nearest_class(run_dir: Path) -> dict:
    """The prompt class whose truth is nearest (mean metric distance over the eval views)."""
    import torch
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from src.backbones.shapes_metrics import image_distance

    # only the world, the NeRF and the cameras (not the guidance and its psi)
    cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    world = instantiate(cfg.backbone)
    rep = instantiate(cfg.representation, backbone=world)
    state = torch.load(run_dir / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)
    rep.load_state_dict(state["representation"])
    views = instantiate(cfg.camera).eval_views()
    with torch.no_grad():
        render = rep.samples(views).clamp(0, 1)
        cls = world.prompt_classes(str(cfg.prompt))
        truth = world.render_classes(cls, views)  # (K, B, H, W, 3)
        d = image_distance(truth, render[None]).mean(1)  # (K,)
    k = int(d.argmin())
    return {"nearest_class": cls[k], "nearest_name": world.class_name(cls[k]), "nearest_dist": float(d[k])}


def summarize(rows: list[dict]) -> dict:
    table = {}
    for method in METHODS:
        rs = sorted((r for r in rows if r["method"] == method and r["returncode"] == 0), key=lambda r: r["seed"])
        if not rs:
            continue
        modes = [r["mode_id"] for r in rs]
        table[method] = {
            "seeds": [r["seed"] for r in rs],
            "mode_ids": modes,
            "distinct_modes": len({m for m in modes if m >= 0}),
            "nearest_classes": [r["nearest_class"] for r in rs],
            "distinct_nearest": len(set(r["nearest_class"] for r in rs)),
            "mean_precision": sum(r["precision"] for r in rs) / len(rs),
            "mean_rmse": sum(r["rmse"] for r in rs) / len(rs),
        }
    return table


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", nargs="+", default=list(METHODS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    p.add_argument("--prompt", default="a cube")
    p.add_argument("--backbone", default="shapes")
    p.add_argument("--steps", type=int, default=None, help="trainer.max_steps (default: the tuned preset's)")
    p.add_argument("--jobs", type=int, default=2, help="runs in parallel")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")
    p.add_argument("--out", default=str(ROOT / "outputs" / "mode_table"))
    p.add_argument("--bench", default=str(ROOT / "benchmarks" / "mode_table"))
    p.add_argument("override", nargs="*", help="extra Hydra overrides for every run")
    args = p.parse_args(argv)
    jobs = [(m, s) for m in args.methods for s in args.seeds]
    t0, load0 = time.time(), os.getloadavg()[0]
    with ThreadPoolExecutor(args.jobs) as ex:
        rows = list(ex.map(lambda ms: run_one(*ms, args), jobs))
    for r in rows:
        if r["returncode"]:
            print(f"FAILED {r['method']} seed {r['seed']}:\n{r['error']}", file=sys.stderr)
    table = summarize(rows)
    meta = {"prompt": args.prompt, "backbone": args.backbone, "steps": args.steps or "preset",
            "seeds": args.seeds, "overrides": args.override, "jobs": args.jobs, "threads": args.threads,
            "wall_s": round(time.time() - t0, 1), "load_start": load0, "load_end": os.getloadavg()[0],
            "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    bench = Path(args.bench)
    bench.parent.mkdir(parents=True, exist_ok=True)
    bench.with_suffix(".json").write_text(json.dumps({"meta": meta, "table": table, "runs": rows}, indent=1))
    lines = [f"# Mode table: prompt \"{args.prompt}\" (backbone={args.backbone}, representation=nerf)", "",
             f"`python scripts/mode_table.py {' '.join(sys.argv[1:])}` — {meta['date']}, "
             f"{len(args.seeds)} seeds, steps {meta['steps']}, {args.jobs} runs in parallel x {args.threads} "
             f"thread(s), load {load0:.1f} -> {meta['load_end']:.1f}, {meta['wall_s']:.0f} s.", "",
             "mode_id: world class (shape * n_colors + color) within the precision threshold, -1 = none; "
             "nearest: the prompt class nearest on average (no threshold).", "",
             "| method | mode_id per seed | distinct modes | nearest class per seed | distinct nearest | mean precision | mean rmse |",
             "|---|---|---:|---|---:|---:|---:|"]
    for m, t in table.items():
        lines.append(f"| {m} | {t['mode_ids']} | {t['distinct_modes']} | {t['nearest_classes']} | "
                     f"{t['distinct_nearest']} | {t['mean_precision']:.2f} | {t['mean_rmse']:.3f} |")
    bench.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 1 if any(r["returncode"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
