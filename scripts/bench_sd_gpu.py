"""GPU cost of every guidance method on Stable Diffusion 2.1-base: the eager reference and the
fast path (issue 12), without downloading the model.

A randomly initialized UNet and VAE of SD 2.1-base's *exact* architecture (configs written
out below, copied from stabilityai/stable-diffusion-2-1-base's unet/ and vae/config.json)
cost the same FLOPs and memory as the real weights. They are saved as a diffusers
repository and loaded through the real ``StableDiffusion`` path (``backbone=diffusers
backbone.path=<dir>``); each (method, render resolution, mode) runs the lead's ``Trainer``
steps with ``representation=nerf``. Modes: ``eager`` (``backbone.fast=false``, the reference)
and ``fast`` (``backbone.fast=true``: fused UNet calls + CUDA graphs, and at renders above
``--checkpoint-from`` px ``representation.checkpoint_chunks=true``; ``--fast-extra`` adds overrides
to it, e.g. ``backbone.compile=all``: benchmarks/sd_gpu_compile/). The text encoder is a
1-layer CLIP with SD 2.1's width (1024): prompts are embedded once and cached.

    python scripts/bench_sd_gpu.py --out benchmarks            # on the GPU machine, ~6 min
    python scripts/bench_sd_gpu.py --arch tiny --device cpu --resolutions 16 --steps 1 --warmup 1 \
        --methods sds vsd --out /tmp/bench                     # smoke test of the script itself
    python scripts/bench_sd_gpu.py --backbone mvdream --resolutions 256 --no-primitives \
        --out benchmarks/sd_gpu_mvdream                        # MVDream (issue 28): 4 views x 256 px

``--backbone mvdream``: MVDream's UNet (SD 2.1-base's with the camera MLP; src/backbones/mvdream.py),
random, saved as a diffusers UNet folder beside the SD repository, each step a set of 4 views.

Robustness: the jobs run in a worker subprocess, one at a time; a job that raises is recorded
with its error, a CUDA error that poisons the process or a job over ``--job-timeout`` restarts
the worker for the remaining jobs, and jobs left when ``--budget-s`` is spent are recorded as
skipped. Results are written after every job. Writes sd_gpu.json and sd_gpu.md into --out
(and sd_gpu_worker.log, the worker's output); prints a compact table last.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's src, also in the worker subprocess

from hydra_plugins.distillery_launchers.isolation import Worker, answer  # noqa: E402
from src.configs import guidance_names  # noqa: E402
from src.studies.tables import markdown_table, write_study  # noqa: E402

METHODS = guidance_names()  # conf/guidance/: every estimator
RESOLUTIONS = (64, 512)  # 256 px on request (--resolutions 64 256 512): the run must fit ~6 minutes
MODES = ("eager", "fast")

# Issue 12's targets for the fast path on an H100, ms per full trainer step at a 64 px render
# (CSD, not in the issue, costs what SDS costs: one CFG call), and DSD relative to SDS.
TARGET_MS_64 = {"sds": 35.0, "csd": 35.0, "ssd": 40.0, "fsd": 40.0, "vsd": 70.0, "esd": 70.0, "sim": 120.0}
TARGET_DSD_X_SDS = 1.3
# ... and memory: VSD with a 512 px render in 16 GB (peak allocated).
TARGET_GB = {("vsd", 512): 16.0}
# Issue 31's: a VSD step with a 512 px render in 200 ms (the NeRF's render + backward in 100 ms:
# the nerf512_render_backward_fast primitive)
TARGET_MS_512 = {"vsd": 200.0}

# stabilityai/stable-diffusion-2-1-base unet/config.json (diffusers keys; defaults omitted)
SD21_BASE_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    attention_head_dim=(5, 10, 20, 20), cross_attention_dim=1024, use_linear_projection=True,
    norm_num_groups=32, norm_eps=1e-5, flip_sin_to_cos=True, freq_shift=0, act_fn="silu",
    downsample_padding=1, mid_block_scale_factor=1, center_input_sample=False,
)
SD21_UNET_PARAMS = 865_910_724  # parameter count of the released SD 2.x UNet
# stabilityai/stable-diffusion-2-1-base vae/config.json
SD21_BASE_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, norm_num_groups=32,
    block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4, act_fn="silu", sample_size=512, scaling_factor=0.18215,
)
# stabilityai/stable-diffusion-2-1-base scheduler/scheduler_config.json (PNDM; the backbone reads
# its beta schedule and prediction type)
SD21_BASE_SCHEDULER = dict(
    beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, num_train_timesteps=1000,
    prediction_type="epsilon", set_alpha_to_one=False, skip_prk_steps=True, steps_offset=1,
)
TEXT_TOKENS = 77  # CLIP context length
TEXT_WIDTH = 1024  # OpenCLIP ViT-H text width = the UNet's cross_attention_dim

TINY_UNET = dict(SD21_BASE_UNET, sample_size=8, block_out_channels=(32, 64), layers_per_block=1,
                 down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), attention_head_dim=8,
                 cross_attention_dim=32, norm_num_groups=8)
TINY_VAE = dict(SD21_BASE_VAE, block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=8, sample_size=16)


def write_random_sd(root: Path, arch: str = "sd21", seed: int = 0) -> Path:
    """A diffusers repository with random weights of the given architecture."""
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    unet_cfg, vae_cfg = (SD21_BASE_UNET, SD21_BASE_VAE) if arch == "sd21" else (TINY_UNET, TINY_VAE)
    width = unet_cfg["cross_attention_dim"]
    torch.manual_seed(seed)
    # initialize on the GPU when there is one: 866 M parameters take a while on CPU cores
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with device:
        unet = UNet2DConditionModel(**unet_cfg)
    n = sum(p.numel() for p in unet.parameters())
    if arch == "sd21" and n != SD21_UNET_PARAMS:
        raise RuntimeError(f"UNet has {n} parameters, SD 2.1-base has {SD21_UNET_PARAMS}: config drifted")
    unet.half().save_pretrained(root / "unet")
    del unet
    with device:
        AutoencoderKL(**vae_cfg).half().save_pretrained(root / "vae")
    # a character-level BPE vocabulary: any prompt tokenizes, nothing is downloaded
    from src.metrics.models import char_bpe_files

    vocab, merges = char_bpe_files(root / "_bpe")
    tok = CLIPTokenizer(str(vocab), str(merges), model_max_length=TEXT_TOKENS)
    tok.save_pretrained(root / "tokenizer")
    CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tok), hidden_size=width, intermediate_size=64, num_attention_heads=8,
        num_hidden_layers=1, max_position_embeddings=TEXT_TOKENS, bos_token_id=0, eos_token_id=1,
        pad_token_id=1,
    )).half().save_pretrained(root / "text_encoder")
    PNDMScheduler(**SD21_BASE_SCHEDULER).save_pretrained(root / "scheduler")
    (root / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    return root


def write_random_mvdream(root: Path, arch: str = "sd21", seed: int = 0) -> Path:
    """The random SD repository (VAE, text encoder, schedule) plus MVDream's UNet of the same size in
    ``root/mvdream_unet`` (SD's UNet with the camera MLP; src/backbones/mvdream.py: unet_config)."""
    from diffusers import UNet2DConditionModel

    from src.backbones.mvdream import unet_config

    write_random_sd(root, arch, seed)
    torch.manual_seed(seed + 1)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        unet = UNet2DConditionModel(**unet_config(SD21_BASE_UNET if arch == "sd21" else TINY_UNET))
    unet.half().save_pretrained(root / "mvdream_unet")
    return root


def backbone_overrides(backbone: str, repo) -> list[str]:
    """``--backbone``: SD through backbone=diffusers, or MVDream on sets of 4 views (camera=multiview)."""
    if backbone == "mvdream":
        return ["backbone=mvdream", f"backbone.path={repo}", f"backbone.checkpoint={repo}/mvdream_unet",
                "camera=multiview"]
    return ["backbone=diffusers", f"backbone.path={repo}"]


def compose(overrides: list[str]):
    from src.api import compose as api_compose

    return api_compose(overrides)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def build_extensions() -> dict:
    """Build nerfacc's JIT CUDA extension here, before any job and outside ``--job-timeout``.

    A worker killed at its timeout while torch.utils.cpp_extension builds leaves the build's lock
    file behind, and every later build waits on it forever: on 2026-12-03 the first job (the
    primitives, then the 70 s build) was killed at 100 s and every job after it timed out."""
    t0 = time.time()
    try:
        import nerfacc

        est = nerfacc.OccGridEstimator(roi_aabb=[-1.0, -1.0, -1.0, 1.0, 1.0, 1.0], resolution=8).cuda()
        rays_o = torch.zeros(2, 3, device="cuda")
        rays_d = torch.nn.functional.normalize(torch.ones(2, 3, device="cuda"), dim=-1)
        est.sampling(rays_o, rays_d, render_step_size=0.1)
        torch.cuda.synchronize()
    except Exception as err:  # the jobs fall back to renderer=dense and record why
        return {"nerfacc_build_error": f"{type(err).__name__}: {err}"[:300], "nerfacc_build_s": time.time() - t0}
    return {"nerfacc_build_s": time.time() - t0}


def cuda_ok() -> bool:
    """Whether the CUDA context still works (an illegal access poisons it for the process)."""
    try:
        torch.zeros(1, device="cuda").add_(1).item()
        torch.cuda.synchronize()
        return True
    except Exception:
        return False


# --- the jobs (run in the worker) -----------------------------------------------------------
def mode_overrides(mode: str, res: int, args) -> list[str]:
    if mode == "eager":
        return ["backbone.fast=false"]
    ckpt = res >= args.checkpoint_from
    return ["backbone.fast=true", f"representation.checkpoint_chunks={str(ckpt).lower()}",
            *args.fast_extra]


def bench_step(job: dict, args, workdir: Path) -> dict:
    """ms per full trainer step and peak GB of one (method, resolution, mode)."""
    from src.backbones.graphs import rel_diff
    from src.trainer import Trainer

    method, res, mode = job["method"], job["resolution"], job["mode"]
    cfg = compose([
        *backbone_overrides(args.backbone, args.repo), f"backbone.dtype={args.dtype}",
        f"backbone.embedding_cache={workdir / 'emb'}", "representation=nerf",
        f"representation.renderer={job.get('renderer', args.renderer)}", f"guidance={method}",
        f"camera.height={res}", f"camera.width={res}", f"device={args.device}",
        "prompt=a DSLR photo of a ceramic lion", f"trainer.max_steps={args.max_steps}",
        "trainer.progress=false", "trainer.export=false",
        # benchmarks/sd_gpu* were measured with torch's default kernels (deterministic came later)
        "trainer.deterministic=false", *mode_overrides(mode, res, args),
    ])
    cuda = args.device.startswith("cuda")
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    trainer = Trainer(cfg, workdir / f"{method}_{res}_{mode}")
    sync(args.device)
    static = torch.cuda.memory_allocated() if cuda else 0
    g0: list = []  # step 0's G: both modes start from the same seed, so they must agree
    hook = trainer.c.guidance.register_forward_hook(
        lambda m, a, out: g0.append(out.grad.detach().float().cpu()) if not g0 else None)
    t_first, first_ms = time.perf_counter(), float("nan")
    for step in range(args.warmup):
        trainer.train_step(step)
        if step == 0:
            sync(args.device)
            first_ms = (time.perf_counter() - t_first) * 1e3  # includes the fast path's captures
    hook.remove()
    sync(args.device)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times = []
    for step in range(args.warmup, args.warmup + args.steps):
        t0 = time.perf_counter()
        logs = trainer.train_step(step)
        sync(args.device)
        times.append((time.perf_counter() - t0) * 1e3)
    row = {
        "kind": "step", "method": method, "resolution": res, "mode": mode,
        "renderer": job.get("renderer", args.renderer),
        "checkpoint_chunks": bool(trainer.c.representation.checkpoint_chunks),
        "ms_median": statistics.median(times), "ms_mean": statistics.fmean(times), "ms_min": min(times),
        "first_step_ms": first_ms, "steps": len(times),
        "peak_gb": torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan"),
        "static_gb": static / 2**30,
        "finite": all(v == v and abs(v) != float("inf") for v in logs.values() if isinstance(v, float)),
    }
    g_path = workdir / f"g0_{method}_{res}_{mode}.pt"
    if g0:
        torch.save(g0[0], g_path)
        eager_path = workdir / f"g0_{method}_{res}_eager.pt"
        if mode != "eager" and eager_path.exists():
            row["g0_rel_diff_vs_eager"] = rel_diff(g0[0], torch.load(eager_path))
    if mode != "eager":
        s = trainer.c.backbone.graphs.summary()
        row["graphs"] = {"captured": len(s["captured"]), "replays": s["replays"], "failures": s["failures"],
                         "off_reason": s["off_reason"],
                         "worst_verify_rel_diff": max(s["verified_rel_diff"].values(), default=None)}
    del trainer
    gc.collect()
    return row


def bench_primitives(args) -> dict:
    """Reference numbers: the UNet's CFG call and the 512 px VAE encode + backward, eager vs
    replayed graph; the NeRF's render + backward (_nerf_primitives)."""
    out = {} if args.nerf_primitives_only else _sd_primitives(args)
    gc.collect()
    torch.cuda.empty_cache()
    out.update(_nerf_primitives(args))
    return out


def _sd_primitives(args) -> dict:
    """The UNet's CFG call (eager, graph) and the 512 px VAE encode + backward: diffusers' modules
    (eager), the fast path's modules (src/backbones/fast_vae.py) called eagerly in both memory
    formats, and replayed as a graph; a psi-sized UNet forward + backward at batch 1 with native
    and many-block GroupNorm (where the fast path could go next)."""
    from src.backbones import fast_vae
    from src.backbones.sd import StableDiffusion

    dev, out = args.device, {}
    bbs = {fast: StableDiffusion(path=str(args.repo), dtype=args.dtype, embedding_cache=None, fast=fast).to(dev)
           for fast in (False, True)}
    bb = bbs[True]
    c = bb.conditioning("a lion", "")
    h = bb.resolution // bb.vae_scale_factor
    x = torch.randn(1, 4, h, h, device=dev)
    t = torch.full((1,), 500, device=dev)
    emb, null = c.select(torch.zeros(1, dtype=torch.long)), c.null(1)
    rgb = torch.rand(1, bb.resolution, bb.resolution, 3, device=dev, requires_grad=True)
    for fast, b in bbs.items():
        tag = "graph" if fast else "eager"
        with torch.no_grad():
            out[f"unet_cfg_b2_{tag}_ms"] = _time(lambda b=b: b.eps(x, t, emb, null, 7.5), dev)
        out[f"vae_encode_backward_{bb.resolution}_{tag}_ms"] = _time(lambda b=b: b.encode(rgb).sum().backward(), dev)
    bb.graphs.enabled = False
    out[f"vae_encode_backward_{bb.resolution}_fast_modules_no_graph_ms"] = _time(lambda: bb.encode(rgb).sum().backward(), dev)
    bb.vae.to(memory_format=torch.contiguous_format)
    out[f"vae_encode_backward_{bb.resolution}_fast_modules_nchw_no_graph_ms"] = _time(
        lambda: bb.encode(rgb).sum().backward(), dev)
    bb.vae.to(memory_format=torch.channels_last)
    bb.graphs.enabled = True
    out["graph_failures"] = bb.graphs.summary()["failures"]
    unet, xb = bbs[False].unet, x.to(bbs[False].unet.dtype)

    def unet_fwd_bwd():
        xi = xb.clone().requires_grad_(True)
        unet(xi, t, encoder_hidden_states=emb.to(xb.dtype)).sample.float().square().sum().backward()

    out["unet_b1_fwd_bwd_native_gn_ms"] = _time(unet_fwd_bwd, dev)
    fast_vae.widen_group_norms(unet)
    out["unet_b1_fwd_bwd_wide_gn_ms"] = _time(unet_fwd_bwd, dev)
    return out


def _nerf_primitives(args) -> dict:
    """The NeRF's render + backward at each --prim-res: the pure-torch grid lookup (``plain``, the
    eager path's) and the fused one (``fast``, representation.fast_field), each without and with
    checkpointed chunks; time and peak. With --profile, torch.profiler's table of the 512 px
    render + backward (CUDA time by op) for both lookups."""
    from hydra.utils import instantiate

    dev, out = args.device, {}
    for res in args.prim_res:
        cfg = compose(["backbone=diffusers", f"backbone.path={args.repo}", "representation=nerf",
                       f"camera.height={res}", f"camera.width={res}"])
        views = instantiate(cfg.camera).sample(0, torch.Generator().manual_seed(0)).to(dev)
        for fast in (False, True):
            for ckpt in (False, True):
                torch.manual_seed(0)
                nerf = instantiate(cfg.representation, backbone=None, checkpoint_chunks=ckpt, fast_field=fast).to(dev)
                nerf.update_step(0)

                def render_backward(nerf=nerf, views=views):
                    nerf.render(views).rgb.square().sum().backward()

                render_backward()
                sync(dev)
                torch.cuda.reset_peak_memory_stats()
                tag = ("fast" if fast else "plain") + ("_checkpointed" if ckpt else "")
                out[f"nerf{res}_render_backward_{tag}_ms"] = _time(render_backward, dev, reps=5, warmup=1)
                out[f"nerf{res}_render_backward_{tag}_peak_gb"] = torch.cuda.max_memory_allocated() / 2**30
                if res == 512 and not ckpt:
                    with torch.no_grad():
                        ri = nerf.estimator.sampling(*(t.reshape(-1, 3) for t in _rays(nerf, views)),
                                                     render_step_size=nerf.render_step_size)[0]
                    out["nerf512_samples_no_early_stop"] = int(ri.numel())
                if args.profile and res == max(args.prim_res) and not ckpt:
                    out[f"profile_{res}_{tag}"] = _profile(render_backward)
                del nerf
                gc.collect()
                torch.cuda.empty_cache()
    return out


def _rays(nerf, views):
    from src.cameras_orbit import get_rays

    return get_rays(views, views.height, views.width)


def _profile(fn, rows: int = 18) -> str:
    """torch.profiler's ops by CUDA time over 2 calls of fn (after one warm-up)."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    sync("cuda")
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(2):
            fn()
        sync("cuda")
    return prof.key_averages().table(sort_by="cuda_time_total", row_limit=rows, max_name_column_width=60)


def worker(args) -> None:
    """Read jobs (JSON lines) from stdin, answer each with one RESULT line on stdout."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    workdir = Path(args.workdir)
    for line in sys.stdin:
        job = json.loads(line)
        if job["kind"] == "quit":
            return
        t0 = time.time()
        try:
            try:
                row = bench_primitives(args) if job["kind"] == "primitives" else bench_step(job, args, workdir)
            except Exception:
                # nerfacc's CUDA path (occupancy grid) failing: the dense renderer, once, said so in the row
                if job["kind"] != "step" or args.renderer == "dense" or "nerfacc" not in traceback.format_exc():
                    raise
                traceback.print_exc()
                print("nerfacc's CUDA path failed: renderer=dense from now on", file=sys.stderr, flush=True)
                args.renderer = "dense"
                row = bench_step(job, args, workdir)
            row = {**job, **row}
        except Exception as err:
            traceback.print_exc()
            row = {**job, "error": f"{type(err).__name__}: {err}"[:600]}
            if args.device.startswith("cuda") and not cuda_ok():
                row["fatal"] = "the CUDA context is broken: the worker restarts"
        row["wall_s"] = time.time() - t0
        gc.collect()
        if args.device.startswith("cuda") and "fatal" not in row:
            torch.cuda.empty_cache()
        answer(row)
        if "fatal" in row:
            sys.exit(3)


# --- the parent: jobs, budget, tables ---------------------------------------------------------
def run_jobs(jobs: list[dict], worker_argv: list[str], args, on_row) -> list[dict]:
    """Every job through worker subprocesses, within args.budget_s (module docstring)."""
    rows, pending = [], list(jobs)
    t_start = time.time()
    with open(Path(args.out) / "sd_gpu_worker.log", "a") as log:
        w = None
        while pending:
            if time.time() - t_start > args.budget_s:
                for job in pending:
                    on_row(rows, {**job, "skipped": f"time budget of {args.budget_s:.0f} s spent"})
                break
            job = pending.pop(0)
            if w is None:
                w = Worker([str(Path(__file__).resolve()), *worker_argv, "--worker"], log, ROOT)
            row = w.ask(job, args.job_timeout)
            if row is None:
                why = w.why_lost()
                w.kill()
                w = None
                row = {**job, "error": f"{why} (see sd_gpu_worker.log)"}
            elif "fatal" in row:
                w.kill()
                w = None
            on_row(rows, row)
        if w is not None:
            w.close({"kind": "quit"})
    return rows


def targets_for(method: str, res: int) -> tuple[str, float | None, str]:
    """(what, bound, unit) of the issue's target for this row, if it has one."""
    if res == 64 and method in TARGET_MS_64:
        return "ms", TARGET_MS_64[method], f"<= {TARGET_MS_64[method]:.0f} ms"
    if res == 64 and method == "dsd":
        return "x_sds", TARGET_DSD_X_SDS, f"<= {TARGET_DSD_X_SDS} x sds"
    if res == 512 and method in TARGET_MS_512 and (method, res) in TARGET_GB:
        bounds = (TARGET_MS_512[method], TARGET_GB[method, res])
        return "ms_gb", bounds, f"<= {bounds[0]:.0f} ms, <= {bounds[1]:.0f} GB"
    if (method, res) in TARGET_GB:
        return "gb", TARGET_GB[method, res], f"<= {TARGET_GB[method, res]:.0f} GB"
    return "", None, ""


def table(rows: list[dict]) -> list[dict]:
    """One line per (method, resolution): eager vs fast, their ratio, the target, pass / fail."""
    steps = [r for r in rows if r.get("kind") == "step"]
    get = {(r["method"], r["resolution"], r["mode"]): r for r in steps}
    lines = []
    for method, res in dict.fromkeys((r["method"], r["resolution"]) for r in steps):
        e, f = get.get((method, res, "eager"), {}), get.get((method, res, "fast"), {})
        line = {"method": method, "resolution": res,
                "eager_ms": e.get("ms_median"), "fast_ms": f.get("ms_median"),
                "eager_gb": e.get("peak_gb"), "fast_gb": f.get("peak_gb"),
                "g0_rel_diff": f.get("g0_rel_diff_vs_eager"),
                "fast_first_step_s": (f.get("first_step_ms") or float("nan")) / 1e3,
                "graph_failures": len((f.get("graphs") or {}).get("failures") or {}),
                "errors": "; ".join(f"{m}: {r.get('error') or r.get('skipped')}" for m, r in
                                    (("eager", e), ("fast", f)) if r.get("error") or r.get("skipped"))}
        if line["eager_ms"] and line["fast_ms"]:
            line["speedup"] = line["eager_ms"] / line["fast_ms"]
        kind, bound, text = targets_for(method, res)
        line["target"] = text
        if kind == "ms" and line["fast_ms"] is not None:
            line["pass"] = line["fast_ms"] <= bound
        elif kind == "x_sds" and line["fast_ms"] is not None:
            sds = get.get(("sds", res, "fast"), {}).get("ms_median")
            line["pass"] = None if sds is None else line["fast_ms"] <= bound * sds
        elif kind == "gb" and line["fast_gb"] is not None:
            line["pass"] = line["fast_gb"] <= bound
        elif kind == "ms_gb" and line["fast_ms"] is not None and line["fast_gb"] is not None:
            line["pass"] = line["fast_ms"] <= bound[0] and line["fast_gb"] <= bound[1]
        lines.append(line)
    return lines


def _f(v, fmt):
    """format(v, fmt), or '-' padded to fmt's width where there is no number."""
    if v is None or v != v:
        return "-".rjust(int(fmt.split(".")[0] or 0))
    return format(v, fmt)


def _verdict(line) -> str:
    return {True: "pass", False: "FAIL", None: "-"}[line.get("pass")] if line["target"] else ""


def markdown(result: dict) -> str:
    env = result["env"]
    lines = [
        f"# {'MVDream ' if result.get('backbone') == 'mvdream' else ''}"
        f"{'SD 2.1-base' if result['arch'] == 'sd21' else 'tiny'} architecture (random weights), NeRF, "
        f"{env['gpu']}: eager reference vs fast path",
        "",
        f"`{result['command']}`  ",
        f"torch {env['torch']}, diffusers {env['diffusers']}, peft {env.get('peft')}, dtype {result['dtype']}, "
        f"batch {result.get('views', 1)} view(s), {result['steps']} timed steps after {result['warmup']} warm-up steps (the first step "
        "captures the fast path's graphs); ms per full trainer step (render + VAE encode + guidance + "
        "backward + psi update), median; peak = torch.cuda.max_memory_allocated over the timed steps "
        "(graph pools included). eager: `backbone.fast=false`; fast: `backbone.fast=true` "
        + "".join(f"`{o}` " for o in result.get("fast_extra", []))
        + f"(+ `representation.checkpoint_chunks=true` from {result['checkpoint_from']} px). "
        "G diff = ||G_fast - G_eager|| / ||G_eager|| at step 0 (same seed). 1st step: the fast path's "
        "first step (graph captures, and torch.compile's compilation where on), seconds.",
        "",
    ]
    head = ["method", "px", "eager ms", "fast ms", "speed-up", "eager GB", "fast GB", "G diff", "1st step s",
            "target (fast)", ""]
    lines += markdown_table(head, [
        [ln["method"], str(ln["resolution"]), _f(ln["eager_ms"], ".1f"), _f(ln["fast_ms"], ".1f"),
         f"{_f(ln.get('speedup'), '.2f')}x", _f(ln["eager_gb"], ".2f"), _f(ln["fast_gb"], ".2f"),
         _f(ln["g0_rel_diff"], ".1e"), _f(ln.get("fast_first_step_s"), ".1f"), ln["target"], _verdict(ln)]
        for ln in result["table"]], right=head[1:9])
    prim = {k: v for k, v in (result.get("primitives") or {}).items() if isinstance(v, (int, float))}
    if prim:
        lines += ["", "Primitives: " + ", ".join(f"{k} = {v:.2f}" for k, v in prim.items()) + "."]
    for k, v in (result.get("primitives") or {}).items():
        if k.startswith("profile_"):
            lines += ["", f"`{k}` (torch.profiler, 2 calls):", "", "```", v, "```"]
    notes = []
    for r in result["rows"]:
        g = r.get("graphs") or {}
        if g.get("failures"):
            notes.append(f"- {r['method']} {r['resolution']} px fast: graphs that fell back to eager: {g['failures']}")
        if g.get("off_reason"):
            notes.append(f"- {r['method']} {r['resolution']} px fast: {g['off_reason']}")
        if r.get("error"):
            notes.append(f"- {r.get('method', r['kind'])} {r.get('resolution', '')} {r.get('mode', '')}: {r['error']}")
        if r.get("skipped"):
            notes.append(f"- {r.get('method', r['kind'])} {r.get('resolution', '')} {r.get('mode', '')}: "
                         f"skipped ({r['skipped']})")
    if (result.get("primitives") or {}).get("graph_failures"):
        notes.append(f"- primitives: graphs that fell back to eager: {result['primitives']['graph_failures']}")
    if notes:
        lines += ["", "Notes:", *notes]
    return "\n".join(lines) + "\n"


def compact(result: dict) -> str:
    """The table printed last (the device tool returns the end of the output)."""
    out = [f"{'method':6} {'px':>4} {'eager':>8} {'fast':>8} {'x':>6} {'eagerGB':>8} {'fastGB':>7} "
           f"{'Gdiff':>8} {'gfail':>5}  target"]
    for ln in result["table"]:
        out.append(f"{ln['method']:6} {ln['resolution']:>4} {_f(ln['eager_ms'], '8.1f')} {_f(ln['fast_ms'], '8.1f')} "
                   f"{_f(ln.get('speedup'), '6.2f')} {_f(ln['eager_gb'], '8.2f')} {_f(ln['fast_gb'], '7.2f')} "
                   f"{_f(ln['g0_rel_diff'], '8.1e')} {ln['graph_failures']:>5}  {ln['target']} {_verdict(ln)}"
                   + (f"  [{ln['errors'][:120]}]" if ln["errors"] else ""))
    prim = result.get("primitives") or {}
    if prim:
        out.append("primitives: " + ", ".join(f"{k}={v:.1f}" for k, v in prim.items() if isinstance(v, (int, float))))
        if prim.get("error"):
            out.append(f"primitives error: {prim['error'][:200]}")
    return "\n".join(out)


def write(result: dict, out: Path) -> None:
    write_study(out / "sd_gpu", result, markdown(result))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(ROOT / "benchmarks"))
    ap.add_argument("--repo", default=None, help="where to write / reuse the random-weight repository")
    ap.add_argument("--arch", default="sd21", choices=("sd21", "tiny"))
    ap.add_argument("--backbone", default="diffusers", choices=("diffusers", "mvdream"),
                    help="mvdream: MVDream's multi-view UNet on sets of 4 views (camera=multiview)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="float16", choices=("float16", "bfloat16", "float32"))
    ap.add_argument("--methods", nargs="+", default=list(METHODS))
    ap.add_argument("--resolutions", nargs="*", type=int, default=list(RESOLUTIONS))
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    ap.add_argument("--renderer", default="auto", help="representation.renderer (auto = occgrid on CUDA)")
    # benchmarks/sd_gpu_fast_field/sd_gpu.md: with the fused grid lookup VSD fits 16 GB at 256 px
    # without checkpointing, which there only costs time; at 512 px it needs it
    ap.add_argument("--checkpoint-from", type=int, default=512,
                    help="fast mode renders at >= this many px with representation.checkpoint_chunks=true")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--max-steps", type=int, default=10000, help="trainer.max_steps (schedules)")
    ap.add_argument("--budget-s", type=float, default=300.0, help="seconds for all jobs; the rest is skipped")
    ap.add_argument("--job-timeout", type=float, default=150.0, help="seconds per job before the worker is killed")
    ap.add_argument("--prim-res", type=int, nargs="+", default=[64, 256, 512], help="render sizes of the NeRF primitive")
    ap.add_argument("--nerf-primitives-only", action="store_true", help="skip the UNet / VAE primitives")
    ap.add_argument("--profile", action="store_true", help="torch.profiler table of the largest NeRF primitive")
    ap.add_argument("--no-primitives", action="store_true")
    ap.add_argument("--fast-extra", nargs="*", default=[],
                    help="overrides added to the fast mode, e.g. backbone.compile=all")
    ap.add_argument("--breakdown", action="store_true", help="only time the parts of a VSD step (in-process)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--workdir", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.worker:
        return worker(args)
    import diffusers
    import peft

    repo = Path(args.repo or tempfile.mkdtemp(prefix=f"random-{args.arch}-"))
    args.repo = str(repo)
    if not (repo / "unet").is_dir() or (args.backbone == "mvdream" and not (repo / "mvdream_unet").is_dir()):
        t0 = time.time()
        (write_random_mvdream if args.backbone == "mvdream" else write_random_sd)(repo, args.arch)
        print(f"wrote random {args.arch} repository to {repo} in {time.time() - t0:.1f}s", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.breakdown:
        parts = bench_breakdown(repo, args)
        print(json.dumps(parts, indent=1))
        (out / "sd_gpu_breakdown.json").write_text(json.dumps(parts, indent=2))
        return
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench-sd-"))
    gpu = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu"
    result = {
        "command": "python scripts/bench_sd_gpu.py " + " ".join(sys.argv[1:]),
        "env": {"gpu": gpu, "torch": torch.__version__, "diffusers": diffusers.__version__,
                "peft": peft.__version__},
        "arch": args.arch, "backbone": args.backbone, "views": 4 if args.backbone == "mvdream" else 1,
        "dtype": args.dtype, "warmup": args.warmup, "steps": args.steps,
        "fast_extra": list(args.fast_extra),
        "checkpoint_from": args.checkpoint_from, "rows": [], "primitives": {}, "table": [],
        "targets": {"ms_64px": TARGET_MS_64, "dsd_x_sds_64px": TARGET_DSD_X_SDS,
                    "peak_gb": {f"{m}@{r}": v for (m, r), v in TARGET_GB.items()}},
    }
    jobs = [] if args.no_primitives or not args.device.startswith("cuda") else [{"kind": "primitives"}]
    jobs += [{"kind": "step", "method": m, "resolution": r, "mode": mode}
             for r in args.resolutions for m in args.methods for mode in args.modes]
    worker_argv = [a for a in sys.argv[1:] if a != "--worker"] + ["--repo", str(repo), "--workdir", str(workdir)]

    def on_row(rows, row):
        rows.append(row)
        if row["kind"] == "primitives":
            result["primitives"] = {k: v for k, v in row.items() if k not in ("kind",)}
        else:
            result["rows"] = [r for r in rows if r["kind"] == "step"]
        result["table"] = table(result["rows"])
        write(result, out)  # after every job: a killed run keeps what it measured
        brief = {k: (round(v, 2) if isinstance(v, float) else v) for k, v in row.items()
                 if k in ("kind", "method", "resolution", "mode", "ms_median", "peak_gb", "first_step_ms",
                          "g0_rel_diff_vs_eager", "error", "skipped", "wall_s")}
        print(json.dumps(brief), flush=True)

    if args.device.startswith("cuda") and args.renderer != "dense":
        result["env"].update(build_extensions())
        print(f"extensions: {result['env']}", flush=True)
    t0 = time.time()
    run_jobs(jobs, worker_argv, args, on_row)
    print(f"\njobs took {time.time() - t0:.0f}s; full results: {out / 'sd_gpu.json'}, {out / 'sd_gpu.md'}\n")
    print(compact(result))


def _time(fn, device: str, reps: int = 10, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    sync(device)
    return (time.perf_counter() - t0) / reps * 1e3


def bench_breakdown(repo: Path, args) -> dict:
    """Where a VSD step's time goes: the UNet in both memory formats, CFG, psi, the DSM step."""
    from src.backbones.sd import StableDiffusion
    from src.cameras import ViewBatch
    from src.representations.base import Representation
    from src.scoremodels.lora import LoRAScore

    dev = args.device
    bb = StableDiffusion(path=str(repo), dtype=args.dtype, embedding_cache=None).to(dev)
    c = bb.conditioning("a lion", "")
    h = bb.resolution // bb.vae_scale_factor
    x = torch.randn(1, 4, h, h, device=dev)
    t = torch.full((1,), 500, device=dev)
    emb, null = c.select(torch.zeros(1, dtype=torch.long)), c.null(1)
    dt = bb.unet.dtype
    x2, t2, e2 = torch.cat([x, x]).to(dt), torch.cat([t, t]), torch.cat([emb, null]).to(dt)
    out = {}
    with torch.no_grad():
        out["unet_b2_channels_last_ms"] = _time(lambda: bb.unet(x2, t2, encoder_hidden_states=e2), dev)
        bb.unet.to(memory_format=torch.contiguous_format)
        out["unet_b2_contiguous_ms"] = _time(lambda: bb.unet(x2, t2, encoder_hidden_states=e2), dev)
        bb.unet.to(memory_format=torch.channels_last)
        out["backbone_eps_cfg_b1_ms"] = _time(lambda: bb.eps(x, t, emb, null, 7.5), dev)
    psi = LoRAScore(bb, Representation()).to(dev)  # cam_dim 16
    cam = torch.randn(1, 16, device=dev)
    views = ViewBatch(index=torch.zeros(1, dtype=torch.long), view_idx=torch.zeros(1, dtype=torch.long),
                      cam=cam.cpu()).to(dev)
    with torch.no_grad():
        out["backbone_eps_cfg_b1_with_lora_loaded_ms"] = _time(lambda: bb.eps(x, t, emb, null, 7.5), dev)
        out["psi_eps_b1_ms"] = _time(lambda: psi.eps(x, t, cam, emb), dev)
        out["psi_eps_b2_ms"] = _time(lambda: psi.eps(x.repeat(2, 1, 1, 1), t.repeat(2), cam.repeat(2, 1),
                                                     emb.repeat(2, 1, 1)), dev)

    def toggle():
        bb._set_adapters(True)
        bb._set_adapters(False)

    out["adapter_toggle_pair_ms"] = _time(toggle, dev)
    g = torch.Generator().manual_seed(0)
    out["psi_fit_step_b1_ms"] = _time(lambda: psi.fit_step(x, views, g, emb), dev)
    return out


if __name__ == "__main__":
    main()
