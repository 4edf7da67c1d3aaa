"""Time to an object at the papers' settings (issue 31): whole runs through the sweep launcher,
a window of steps each, extrapolated to the paper's step count.

Each row is a paper's first-stage setup on Stable Diffusion 2.1-base's architecture with random
weights (``scripts/bench_sd_gpu.py: write_random_sd``; Dive3D's PickScore reward a random
CLIP ViT-H/14, ``write_random_clip``), the NeRF with threestudio's hash grid (16 levels,
2^19 entries). Each (row, mode) is one ``python -m src.train -m hydra/launcher=submitit_local``
job, the same job code path as a sweep on a cluster (modes: eager ``backbone.fast=false``, fast
``backbone.fast=true`` which also turns on the fused grid lookup, ``representation.fast_field``;
``--compile all`` adds ``backbone.compile=all`` to the fast mode). All jobs share one torch.compile
cache (``TORCHINDUCTOR_CACHE_DIR`` under --out's work dir), as every job of one sweep does.

The window: ``trainer.max_steps`` = the window's steps, every phase of the paper's resolution
schedule ``--window`` steps long (the milestones moved to the phase boundaries of the window), the
per-step timestamps of ``metrics.jsonl`` (``+logger.timestamps=true``, ``trainer.log_every=1``).
Per phase p with N_p paper steps: its first step's time f_p (graph captures and compiles at the
new shapes) and the median m_p of its other steps. The object's time

    T = startup + (N_0 - 1) m_0 + sum_{p >= 1} (f_p + (N_p - 1) m_p)

where startup is the launch of the sweep command to the end of step 0 (Python, Hydra, submitit,
model loads, compile). Not counted: validation grids (``trainer.val_every=0``), checkpoints (every
200 steps in a real run, small next to the steps), the final evaluation and export. Peak memory:
the most GPU memory in use while the job ran (NVML through nvidia-smi, the whole device: CUDA
context and the allocator's cache included, as the papers' GB figures).

    python scripts/bench_objects.py --out benchmarks                  # on the GPU machine
    python scripts/bench_objects.py --arch tiny --device cpu --rows dreamfusion_sd --modes eager \\
        --window 2 --out /tmp/objects                                 # smoke test, CPU

Writes objects.json and objects.md into --out after every job; prints a compact table last.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT))
from bench_sd_gpu import backbone_overrides  # noqa: E402

from hydra_plugins.distillery_launchers.isolation import run_command  # noqa: E402
from src.studies.tables import markdown_table, write_study  # noqa: E402

# threestudio's ImplicitVolume hash grid (configs/dreamfusion-sd.yaml, prolificdreamer.yaml):
# the papers' field, not the CPU-sized default of conf/representation/nerf.yaml
THREESTUDIO_GRID = ["representation.grid.n_levels=16", "representation.grid.log2_hashmap_size=19"]
PROMPT = "a DSLR photo of a ceramic lion"


@dataclass
class Row:
    name: str
    paper: str  # what the paper or its reference implementation reports, with the source
    overrides: list[str]
    steps: int  # the paper's steps
    phases: list[tuple[int, int]]  # (first step, render px) of the paper's schedule
    paper_hours: float | None = None
    paper_gb: float | None = None
    target_min: float | None = None  # issue 31's bound for the fast path
    target_gb: float | None = None
    backbone: str = "diffusers"  # bench_sd_gpu.py --backbone: diffusers (SD 2.1) or mvdream (4-view sets)


def schedule(phases: list[tuple[int, int]], steps: int) -> list[str]:
    """representation.resolution_schedule for these phases of a run of ``steps`` steps."""
    if len(phases) == 1:
        return [f"camera.height={phases[0][1]}", f"camera.width={phases[0][1]}"]
    res = ",".join(str(p) for _, p in phases)
    ms = ",".join(repr(s / steps) for s, _ in phases[1:])
    last = phases[-1][1]
    return [f"representation.resolution_schedule={{resolutions:[{res}],milestones:[{ms}]}}",
            f"camera.height={last}", f"camera.width={last}"]


# ProlificDreamer stage 1 (threestudio configs/prolificdreamer.yaml): 64 px for 5000 steps, then
# 512 px, 25000 steps in all
PD_PHASES = [(0, 64), (5000, 512)]
ROWS = [
    Row("dreamfusion_sd", "threestudio DreamFusion-SD: ~30 min a prompt on an A100 (threestudio README)",
        ["guidance=sds", "representation=nerf", *THREESTUDIO_GRID], 10000, [(0, 64)],
        paper_hours=0.5, target_min=6.0),
    Row("prolificdreamer_s1", "ProlificDreamer stage 1 (VSD): 7.9 h, ~27 GB on an A100 (Dive3D's Table 4)",
        ["guidance=vsd", "representation=nerf", *THREESTUDIO_GRID], 25000, PD_PHASES,
        paper_hours=7.9, paper_gb=27.0, target_min=90.0, target_gb=20.0),
    Row("dive3d_sd", "Dive3D-SD (SIM + PickScore reward): 9.0 h, ~35 GB on an A100 (Dive3D's Table 4)",
        ["guidance=sim", "representation=nerf", *THREESTUDIO_GRID, "reward=pickscore",
         "guidance.reward_weight=1.0"], 25000, PD_PHASES,
        paper_hours=9.0, paper_gb=35.0, target_min=120.0, target_gb=24.0),
    Row("gaussiandreamer_like", "GaussianDreamer (3D Gaussians, SDS, 512 px, 1200 steps): 15 min on an RTX 3090",
        ["guidance=sds", "representation=gaussians"], 1200, [(0, 512)], paper_hours=0.25, target_min=5.0),
    Row("esd", "ESD (as ProlificDreamer stage 1; its paper gives no time)",
        ["guidance=esd", "representation=nerf", *THREESTUDIO_GRID], 25000, PD_PHASES),
    Row("mvdream", "MVDream (4 views at 256 px, 10k steps): 0.7 h, ~14 GB on an A100 (MVDream's paper)",
        ["guidance=sds", "representation=nerf", *THREESTUDIO_GRID], 10000, [(0, 256)],
        paper_hours=0.7, paper_gb=14.0, backbone="mvdream"),
]
MODES = ("eager", "fast")


# --- random weights ---------------------------------------------------------------------------
# laion/CLIP-ViT-H-14-laion2B-s32B-b79K config.json (PickScore_v1 is this architecture)
VIT_H_TEXT = dict(hidden_size=1024, intermediate_size=4096, num_attention_heads=16, num_hidden_layers=24,
                  max_position_embeddings=77, hidden_act="gelu")
VIT_H_VISION = dict(hidden_size=1280, intermediate_size=5120, num_attention_heads=16, num_hidden_layers=32,
                    image_size=224, patch_size=14, hidden_act="gelu")


def write_random_clip(root: Path, arch: str = "sd21") -> Path:
    """A CLIP of PickScore's architecture (ViT-H/14) with random weights and a character-level
    tokenizer, as a transformers directory (reward.path=<root>)."""
    import torch
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    from src.metrics.models import char_bpe_files

    if (root / "config.json").exists():
        return root
    vocab, merges = char_bpe_files(root / "_bpe")
    tok = CLIPTokenizer(str(vocab), str(merges), model_max_length=77)
    tok.save_pretrained(root)
    ids = dict(vocab_size=len(tok), bos_token_id=0, eos_token_id=1, pad_token_id=1)
    if arch == "sd21":
        text, vision, proj = {**VIT_H_TEXT, **ids}, VIT_H_VISION, 1024
    else:
        text = dict(hidden_size=16, intermediate_size=32, num_attention_heads=2, num_hidden_layers=1, **ids)
        vision, proj = dict(hidden_size=16, intermediate_size=32, num_attention_heads=2, num_hidden_layers=1,
                            image_size=32, patch_size=8), 16
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=proj))
    model.half().save_pretrained(root)
    return root


# --- one job ----------------------------------------------------------------------------------
class MemoryPoll:
    """The most GPU memory in use (MiB, nvidia-smi) while running; None without nvidia-smi."""

    def __init__(self, every_s: float = 0.5):
        self.peak_mib: float | None = None
        self.every_s, self._stop = every_s, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                                     capture_output=True, text=True, timeout=10).stdout
                used = max(float(v) for v in out.split())
                self.peak_mib = used if self.peak_mib is None else max(self.peak_mib, used)
            except (OSError, ValueError, subprocess.SubprocessError):
                return
            self._stop.wait(self.every_s)

    def __enter__(self):
        if shutil.which("nvidia-smi"):
            self.thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self.thread.is_alive():
            self.thread.join()


def window_overrides(row: Row, window: int) -> tuple[list[str], list[tuple[int, int, int]]]:
    """The window run's overrides and its phases (first window step, paper steps, px)."""
    n = window * len(row.phases)
    phases = []
    for i, (start, px) in enumerate(row.phases):
        end = row.phases[i + 1][0] if i + 1 < len(row.phases) else row.steps
        phases.append((i * window, end - start, px))
    pts = [(i * window, px) for i, (_, px) in enumerate(row.phases)]
    return [*row.overrides, *schedule(pts, n), f"trainer.max_steps={n}"], phases


def job_dir(row: Row, mode: str, work: Path) -> Path:
    """The one-job sweep dir of (row, mode)."""
    return work / f"{row.name}_{mode}"


def job_command(row: Row, mode: str, args, work: Path) -> list[str]:
    """The sweep command of one (row, mode): a one-job multirun in its job_dir."""
    overrides, _ = window_overrides(row, args.window)
    sweep_dir = job_dir(row, mode, work)
    fast = mode != "eager"
    cmd = [sys.executable, "-m", "src.train", "-m", "hydra/launcher=submitit_local",
           f"hydra.sweep.dir={sweep_dir}", "hydra.sweep.subdir=run", f"hydra.launcher.timeout_min={int(args.job_timeout_min)}",
           *backbone_overrides(row.backbone, args.repo), f"backbone.dtype={args.dtype}",
           f"backbone.embedding_cache={work / 'emb'}", f"device={args.device}", f"prompt='{PROMPT}'",
           *overrides, f"backbone.fast={str(fast).lower()}",
           *([f"backbone.compile={args.compile}"] if fast and args.compile != "none" else []),
           # the fast path checkpoints the NeRF's chunks at 512 px only (nerf.py: AUTO_CHECKPOINT_RAYS)
           *(["representation.checkpoint_chunks=auto"] if fast and "representation=nerf" in overrides else []),
           *(args.fast_extra if fast else []),
           "trainer.val_every=0", "trainer.export=false", "trainer.progress=false", "trainer.log_every=1",
           "trainer.checkpoint_every=1000000", "+logger.timestamps=true"]
    if "reward=pickscore" in overrides:
        cmd += [f"reward.path={args.clip}", "reward.processor_path=null"]
    return cmd


def run_job(row: Row, mode: str, args, work: Path) -> dict:
    """One (row, mode) through the sweep launcher; its timings from the run's metrics.jsonl."""
    _, phases = window_overrides(row, args.window)
    sweep_dir = job_dir(row, mode, work)
    shutil.rmtree(sweep_dir, ignore_errors=True)
    cmd = job_command(row, mode, args, work)
    env = {**os.environ, "DISTILLERY_LOCAL_PARALLELISM": "1", "HF_HUB_OFFLINE": "1",
           "TORCHINDUCTOR_CACHE_DIR": str(work / "compile_cache"), "PYTHONUNBUFFERED": "1"}
    row_out = {"row": row.name, "mode": mode, "command": " ".join(cmd[1:]), "window_steps_per_phase": args.window}
    t_launch = time.time()
    with MemoryPoll() as mem, open(work / f"{row.name}_{mode}.log", "w") as log:
        rc = run_command(cmd, cwd=ROOT, env=env, log=log, timeout_s=args.job_timeout_min * 60 + 60)
    row_out["wall_s"] = time.time() - t_launch
    row_out["peak_gb"] = None if mem.peak_mib is None else mem.peak_mib / 1024
    lines = []
    metrics = sweep_dir / "run" / "metrics.jsonl"
    if metrics.exists():
        lines = [json.loads(s) for s in metrics.read_text().splitlines() if s.strip()]
    stamps = {int(r["step"]): float(r["unix_time"]) for r in lines if "unix_time" in r}
    if rc != 0:
        row_out["error"] = f"exit {rc}: {job_error(sweep_dir, work / f'{row.name}_{mode}.log')}"
    if 1 not in stamps:
        row_out.setdefault("error", "no step was logged")
        return row_out
    timing = extrapolate(stamps, t_launch, phases, args.window)
    if "error" in row_out:  # the job's own error is the one to report
        timing.pop("error", None)
    return {**row_out, **timing}


def job_error(sweep_dir: Path, log: Path) -> str:
    """The failed job's own error (the launcher's failed.txt), else the end of the sweep's log."""
    failed = sweep_dir / "failed.txt"
    if failed.exists():
        lines = [ln.strip() for ln in failed.read_text().splitlines() if ln.strip().startswith("error:")]
        if lines:
            return lines[0][len("error:"):].strip()[:600]
    return " | ".join(log.read_text().strip().splitlines()[-4:])[-600:] if log.exists() else "no log"


def extrapolate(stamps: dict[int, float], t_launch: float, phases: list[tuple[int, int, int]],
                window: int) -> dict:
    """The object's time from a window run's log stamps {step: unix time after that many steps}
    (module docstring); phases: (first window step, paper steps, px)."""
    dur = {s: stamps[s + 1] - stamps[s] for s in stamps if s >= 1 and s + 1 in stamps}  # step s's time
    out = {"startup_s": stamps[1] - t_launch}  # launch -> the end of step 0
    total, parts, formula = out["startup_s"], [], ["startup"]
    for i, (w0, n_paper, px) in enumerate(phases):
        rest = [dur[s] for s in range(w0 + 1, w0 + window) if s in dur]
        first = dur.get(w0) if i > 0 else None
        if not rest or (i > 0 and first is None):
            return {**out, "error": f"phase {px} px: too few steps logged"}
        m = statistics.median(rest)
        parts.append({"px": px, "paper_steps": n_paper, "median_step_s": m, "first_step_s": first,
                      "measured_steps": len(rest) + (first is not None)})
        if i == 0:
            total += (n_paper - 1) * m
            formula.append(f"({n_paper} - 1) x m_{px}")
        else:
            total += first + (n_paper - 1) * m
            formula.append(f"f_{px} + ({n_paper} - 1) x m_{px}")
    return {**out, "phases": parts, "object_s": total, "formula": "T = " + " + ".join(formula)}


# --- tables -------------------------------------------------------------------------------------
def _fmt_time(s):
    if s is None:
        return "-"
    return f"{s / 3600:.2f} h" if s >= 3600 else f"{s / 60:.1f} min"


def _f(v, fmt):
    return "-" if v is None else format(v, fmt)


def table(result: dict) -> list[dict]:
    rows = {r.name: r for r in ROWS}
    got = {(j["row"], j["mode"]): j for j in result["jobs"]}
    lines = []
    for name in dict.fromkeys(j["row"] for j in result["jobs"]):
        row = rows[name]
        e, f = got.get((name, "eager"), {}), got.get((name, "fast"), {})
        line = {"row": name, "paper": row.paper, "eager_s": e.get("object_s"), "fast_s": f.get("object_s"),
                "eager_gb": e.get("peak_gb"), "fast_gb": f.get("peak_gb"),
                "target": " ".join(filter(None, [row.target_min and f"<= {row.target_min:g} min",
                                                 row.target_gb and f"<= {row.target_gb:g} GB"])),
                "notes": "; ".join(f"{m}: {j['error']}" for m, j in (("eager", e), ("fast", f)) if j.get("error"))}
        if f.get("object_s") is not None and row.target_min is not None:
            ok = f["object_s"] <= row.target_min * 60
            if row.target_gb is not None and f.get("peak_gb") is not None:
                ok = ok and f["peak_gb"] <= row.target_gb
            line["pass"] = ok
        lines.append(line)
    return lines


def markdown(result: dict) -> str:
    env = result["env"]
    out = [f"# Time to an object at the papers' settings ({env['gpu']})", "",
           f"`{result['command']}`  ",
           f"torch {env['torch']}, diffusers {env.get('diffusers')}; {result['arch']} architecture with random "
           f"weights, {result['dtype']}; NeRF rows with threestudio's hash grid (16 levels, 2^19). Each mode is "
           "one sweep job (`python -m src.train -m hydra/launcher=submitit_local`, the command in the json); "
           f"window: {result['window']} steps per resolution phase, extrapolated to the paper's steps: "
           "T = startup + (N_0 - 1) m_0 + sum_p>=1 (f_p + (N_p - 1) m_p) (m: median step, f: a phase's first "
           "step; startup: the sweep command's launch to the end of step 0). Validation grids, checkpoints, the "
           "final evaluation and export are not counted. GB: the most GPU memory in use during the job "
           "(nvidia-smi). eager: `backbone.fast=false`; fast: `backbone.fast=true` "
           + (f"`backbone.compile={result['compile']}` " if result["compile"] != "none" else "")
           + "".join(f"`{o}` " for o in result.get("fast_extra", []))
           + "(graphs, fused calls, the fused grid lookup).", "",
           ]
    head = ["row", "paper", "eager", "fast", "eager GB", "fast GB", "fast target", ""]
    out += markdown_table(head, [[ln["row"], ln["paper"], _fmt_time(ln["eager_s"]), _fmt_time(ln["fast_s"]),
                                  _f(ln["eager_gb"], ".1f"), _f(ln["fast_gb"], ".1f"), ln["target"],
                                  {True: "pass", False: "FAIL"}.get(ln.get("pass"), "")]
                                 for ln in result["table"]], right=head[2:6])
    out += ["", "Per job (seconds): startup; per phase px: median step m, first step f, paper steps N.", ""]
    for j in result["jobs"]:
        ph = ", ".join(f"{p['px']} px m={p['median_step_s']:.3f} f={_f(p['first_step_s'], '.2f')} N={p['paper_steps']}"
                       for p in j.get("phases", []))
        out.append(f"- {j['row']} {j['mode']}" + (f" (run {j['attempt']})" if j.get("attempt", 1) > 1 else "")
                   + ": " + (f"startup {j['startup_s']:.1f}; {ph}; {j.get('formula', '')}"
                                                    if "startup_s" in j else "")
                   + (f" ERROR {j['error']}" if j.get("error") else "") + (f" {j['skipped']}" if j.get("skipped") else ""))
    return "\n".join(out) + "\n"


def write(result: dict, out: Path) -> None:
    result["table"] = table(result)
    write_study(out / "objects", result, markdown(result))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(ROOT / "benchmarks"))
    ap.add_argument("--work", default=None, help="sweep dirs, logs, compile cache (default: a temp dir)")
    ap.add_argument("--repo", default=None, help="the random SD repository (written when missing)")
    ap.add_argument("--clip", default=None, help="the random ViT-H/14 CLIP (written when missing)")
    ap.add_argument("--arch", default="sd21", choices=("sd21", "tiny"))
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="float16")
    ap.add_argument("--rows", nargs="+", default=[r.name for r in ROWS], choices=[r.name for r in ROWS])
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    ap.add_argument("--compile", default="none", choices=("none", "vae", "unet", "all"))
    ap.add_argument("--fast-extra", nargs="*", default=[],
                    help="overrides added to the fast mode, e.g. representation.checkpoint_chunks=true")
    ap.add_argument("--window", type=int, default=8, help="steps per resolution phase")
    ap.add_argument("--repeat", type=int, default=1,
                    help="run each job this many times (one compile cache: the 2nd start-up is a warm cache's)")
    ap.add_argument("--budget-s", type=float, default=420.0, help="no job starts after this many seconds")
    ap.add_argument("--job-timeout-min", type=int, default=6)
    args = ap.parse_args()
    import diffusers
    import torch
    from bench_sd_gpu import write_random_mvdream, write_random_sd

    work = Path(args.work or tempfile.mkdtemp(prefix="bench-objects-"))
    work.mkdir(parents=True, exist_ok=True)
    args.repo = str(args.repo or work / f"random-{args.arch}")
    if "mvdream" in args.rows and not (Path(args.repo) / "mvdream_unet").is_dir():
        write_random_mvdream(Path(args.repo), args.arch)  # the SD repository plus MVDream's UNet
    elif not (Path(args.repo) / "unet").is_dir():
        write_random_sd(Path(args.repo), args.arch)
    args.clip = str(args.clip or work / f"random-clip-{args.arch}")
    if "dive3d_sd" in args.rows:
        write_random_clip(Path(args.clip), args.arch)
    result = {"command": "python scripts/bench_objects.py " + " ".join(sys.argv[1:]), "arch": args.arch,
              "dtype": args.dtype, "window": args.window, "compile": args.compile,
              "fast_extra": list(args.fast_extra),
              "env": {"gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
                      "torch": torch.__version__, "diffusers": diffusers.__version__},
              "jobs": []}
    t0 = time.time()
    for name in args.rows:
        row = next(r for r in ROWS if r.name == name)
        for mode in args.modes:
            if time.time() - t0 > args.budget_s:
                job = {"row": name, "mode": mode, "skipped": f"time budget of {args.budget_s:.0f} s spent"}
            else:
                job = None
            for attempt in range(args.repeat if job is None else 1):
                if job is None or attempt:
                    job = {**run_job(row, mode, args, work), "attempt": attempt + 1}
                result["jobs"].append(job)
                write(result, Path(args.out))
                print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in job.items()
                                  if k in ("row", "mode", "attempt", "startup_s", "object_s", "peak_gb", "error",
                                           "skipped")}), flush=True)
    print()
    for ln in result["table"]:
        print(f"{ln['row']:22} eager {_fmt_time(ln['eager_s']):>9} fast {_fmt_time(ln['fast_s']):>9} "
              f"GB {_f(ln['eager_gb'], '5.1f')}/{_f(ln['fast_gb'], '5.1f')} {ln['target']} "
              f"{ {True: 'pass', False: 'FAIL'}.get(ln.get('pass'), '')} {ln['notes'][:200]}")


if __name__ == "__main__":
    main()
