"""CPU throughput of every guidance method on representation=nerf, backbone=shapes.

    python scripts/bench_nerf_cpu.py [--methods sds vsd ...] [--resolutions 32 64]
                                     [--warmup 2] [--steps 5] [--threads 2]

For each (method, resolution) the trainer is built through its Python API
(``src.trainer.Trainer`` on the composed Hydra config, as ``python -m src.train``
would) and ``train_step`` is timed after ``warmup`` steps (first-step costs: psi
construction, DSD's first ODE trajectory, allocator warm-up). Also times the NeRF's
render + backward alone. Writes benchmarks/nerf_cpu.json and benchmarks/nerf_cpu.md.
The numbers depend on the machine's load: the load average is recorded with them.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from src.configs import guidance_names  # noqa: E402
from src.studies.tables import markdown_table, write_study  # noqa: E402

METHODS = guidance_names()  # conf/guidance/: every estimator
PROMPT = "a red cube"


def compose(method: str, res: int, extra: list[str]):
    from hydra import compose as hcompose
    from hydra import initialize_config_dir

    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return hcompose("config", overrides=[
            "representation=nerf", "backbone=shapes", f"guidance={method}", f"backbone.resolution={res}",
            f"prompt={PROMPT}", "trainer.max_steps=1000", "trainer.progress=false", "device=cpu", *extra])


def bench_method(method: str, res: int, warmup: int, steps: int, extra: list[str]) -> dict:
    from src.trainer import Trainer

    cfg = compose(method, res, extra)
    with tempfile.TemporaryDirectory() as d:
        tr = Trainer(cfg, Path(d))
        for s in range(warmup):
            tr.train_step(s)
        t0 = time.perf_counter()
        for s in range(warmup, warmup + steps):
            tr.train_step(s)
        dt = (time.perf_counter() - t0) / steps
    return {"method": method, "resolution": res, "steps_per_s": 1.0 / dt, "s_per_step": dt}


def bench_render(res: int, warmup: int, steps: int) -> dict:
    """NeRF render + backward alone (conf/representation/nerf.yaml defaults, batch 1)."""
    from src.cameras_orbit import OrbitSampler
    from src.representations.nerf import NeRF

    torch.manual_seed(0)
    nerf = NeRF()
    cams = OrbitSampler(batch_size=1, height=res, width=res, distance_range=(2.0, 2.0), fovy_range=(40.0, 40.0))
    g = torch.Generator().manual_seed(0)
    fwd = bwd = 0.0
    for i in range(warmup + steps):
        v = cams.sample(i, g)
        t0 = time.perf_counter()
        out = nerf.render(v)
        t1 = time.perf_counter()
        out.rgb.sum().backward()
        t2 = time.perf_counter()
        if i >= warmup:
            fwd, bwd = fwd + (t1 - t0), bwd + (t2 - t1)
    return {"resolution": res, "render_s": fwd / steps, "backward_s": bwd / steps,
            "samples_per_ray": nerf.n_samples}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--methods", nargs="+", default=list(METHODS))
    ap.add_argument("--resolutions", nargs="+", type=int, default=[32, 64])
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "nerf_cpu")
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    load0 = os.getloadavg()
    render = [bench_render(r, a.warmup, a.steps) for r in a.resolutions]
    for r in render:
        print(f"render {r['resolution']}px: forward {r['render_s']:.3f}s backward {r['backward_s']:.3f}s", flush=True)
    rows = []
    for res in a.resolutions:
        for m in a.methods:
            row = bench_method(m, res, a.warmup, a.steps, a.overrides)
            rows.append(row)
            print(f"{m:4s} {res}px: {row['steps_per_s']:.3f} steps/s", flush=True)
    info = {"cpu": platform.processor() or platform.machine(), "threads": a.threads,
            "torch": torch.__version__, "loadavg_start": load0, "loadavg_end": os.getloadavg(),
            "warmup": a.warmup, "steps": a.steps, "prompt": PROMPT, "overrides": a.overrides,
            "time": time.strftime("%Y-%m-%d %H:%M:%S")}
    md = ["# NeRF CPU throughput (representation=nerf, backbone=shapes)", "",
          f"`python scripts/bench_nerf_cpu.py` — {info['time']}, {a.threads} threads, torch {info['torch']}, "
          f"load average {load0[0]:.1f} at start / {info['loadavg_end'][0]:.1f} at end "
          f"(other jobs share this machine: treat as lower bounds), mean of {a.steps} steps after {a.warmup} warm-up.",
          "", "Training steps per second (batch 1, prompt \"a red cube\"):", ""]
    cols = [f"{r} px" for r in a.resolutions]
    md += markdown_table(["method", *cols], [
        [m, *[next(f"{r['steps_per_s']:.2f}" for r in rows if r["method"] == m and r["resolution"] == res)
              for res in a.resolutions]] for m in a.methods], right=cols)
    md += ["", f"NeRF render alone ({render[0]['samples_per_ray']} samples per ray, batch 1):", ""]
    md += markdown_table(["resolution", "render (s)", "backward (s)"],
                         [[f"{r['resolution']} px", f"{r['render_s']:.3f}", f"{r['backward_s']:.3f}"] for r in render],
                         right=["render (s)", "backward (s)"])
    write_study(a.out, {"info": info, "render": render, "methods": rows}, "\n".join(md) + "\n")
    print(f"wrote {a.out.with_suffix('.json')} and .md")


if __name__ == "__main__":
    main()
