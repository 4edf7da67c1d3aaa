"""GPU cost of every guidance method on Stable Diffusion 2.1-base, without downloading it.

A randomly initialized UNet and VAE of SD 2.1-base's *exact* architecture (configs written
out below, copied from stabilityai/stable-diffusion-2-1-base's unet/ and vae/config.json)
cost the same FLOPs and memory as the real weights. They are saved as a diffusers
repository and loaded through the real ``StableDiffusion`` path (``backbone=diffusers
backbone.path=<dir>``); each (method, render resolution) runs the lead's ``Trainer``
steps with ``representation=nerf``. The text encoder is a 1-layer CLIP with SD 2.1's
width (1024): prompts are embedded once and cached, so it costs nothing per step.

    python scripts/bench_sd_gpu.py --out benchmarks            # on the GPU machine
    python scripts/bench_sd_gpu.py --arch tiny --device cpu --resolutions 32 --steps 1  # smoke

Writes sd_gpu.json and sd_gpu.md (ms/step median and mean, peak GB) into --out.
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

from src.configs import guidance_names

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

METHODS = guidance_names()  # conf/guidance/: every estimator
RESOLUTIONS = (64, 256, 512)

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
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for suffix in ("", "</w>"):
        for c in "abcdefghijklmnopqrstuvwxyz,.0123456789":
            vocab[c + suffix] = len(vocab)
    bpe = root / "_bpe"
    bpe.mkdir(parents=True, exist_ok=True)
    (bpe / "vocab.json").write_text(json.dumps(vocab))
    (bpe / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(str(bpe / "vocab.json"), str(bpe / "merges.txt"), model_max_length=TEXT_TOKENS)
    tok.save_pretrained(root / "tokenizer")
    CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tok), hidden_size=width, intermediate_size=64, num_attention_heads=8,
        num_hidden_layers=1, max_position_embeddings=TEXT_TOKENS, bos_token_id=0, eos_token_id=1,
        pad_token_id=1,
    )).half().save_pretrained(root / "text_encoder")
    PNDMScheduler(**SD21_BASE_SCHEDULER).save_pretrained(root / "scheduler")
    (root / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    return root


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from src.train import CONF_DIR

    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        return hydra_compose("config", overrides=overrides)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def bench_one(repo: Path, method: str, res: int, args, workdir: Path, renderer: str) -> dict:
    from src.trainer import Trainer

    cfg = compose([
        "backbone=diffusers", f"backbone.path={repo}", f"backbone.dtype={args.dtype}",
        f"backbone.embedding_cache={workdir / 'emb'}", "representation=nerf",
        f"representation.renderer={renderer}", f"guidance={method}", f"camera.height={res}",
        f"camera.width={res}", f"device={args.device}", "prompt=a DSLR photo of a ceramic lion",
        f"trainer.max_steps={args.max_steps}", "trainer.progress=false", "trainer.export=false",
    ])
    cuda = args.device.startswith("cuda")
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    trainer = Trainer(cfg, workdir / f"{method}_{res}")
    sync(args.device)
    static = torch.cuda.memory_allocated() if cuda else 0
    for step in range(args.warmup):
        trainer.train_step(step)
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
        "method": method, "resolution": res, "renderer": renderer,
        "ms_median": statistics.median(times), "ms_mean": statistics.fmean(times),
        "ms_min": min(times), "steps": len(times),
        "peak_gb": torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan"),
        "static_gb": static / 2**30,
        "finite": all(v == v and abs(v) != float("inf") for v in logs.values() if isinstance(v, float)),
    }
    del trainer
    gc.collect()
    return row


def bench_primitives(repo: Path, args) -> dict:
    """The UNet's CFG forward (batch 1 -> 2) and a 512 VAE encode + backward, for reference."""
    from src.backbones.sd import StableDiffusion

    bb = StableDiffusion(path=str(repo), dtype=args.dtype, embedding_cache=None).to(args.device)
    c = bb.conditioning("a lion", "")
    h = bb.resolution // bb.vae_scale_factor
    out = {}
    for B in (1, 4):
        x = torch.randn(B, 4, h, h, device=args.device)
        t = torch.full((B,), 500, device=args.device)
        emb, null = c.select(torch.zeros(B, dtype=torch.long)), c.null(B)
        with torch.no_grad():
            for _ in range(3):
                bb.eps(x, t, emb, null, 7.5)
            sync(args.device)
            t0 = time.perf_counter()
            for _ in range(10):
                bb.eps(x, t, emb, null, 7.5)
            sync(args.device)
        out[f"unet_cfg_forward_batch{2 * B}_ms"] = (time.perf_counter() - t0) / 10 * 1e3
    rgb = torch.rand(1, bb.resolution, bb.resolution, 3, device=args.device, requires_grad=True)
    for i in range(4):
        if i == 1:
            sync(args.device)
            t0 = time.perf_counter()
        bb.encode(rgb).sum().backward()
    sync(args.device)
    out[f"vae_encode_backward_{bb.resolution}_ms"] = (time.perf_counter() - t0) / 3 * 1e3
    del bb
    gc.collect()
    return out


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


def markdown(result: dict) -> str:
    rows = result["rows"]
    res = sorted({r["resolution"] for r in rows})
    lines = [
        f"# {'SD 2.1-base' if result['arch'] == 'sd21' else 'tiny'} architecture (random weights), NeRF, {result['env']['gpu']}",
        "",
        f"`{result['command']}`  ",
        f"torch {result['env']['torch']}, diffusers {result['env']['diffusers']}, dtype "
        f"{result['dtype']}, batch 1 view, {result['steps']} timed steps after {result['warmup']} "
        "warm-up steps; ms per full trainer step (render + VAE encode + guidance + backward + psi "
        "update), median (mean); peak = torch.cuda.max_memory_allocated over the timed steps.",
        "",
        "| method | " + " | ".join(f"{r} px: ms/step (mean) | {r} px: peak GB" for r in res) + " |",
        "|---|" + "---:|---:|" * len(res),
    ]
    for m in dict.fromkeys(r["method"] for r in rows):
        cells = []
        for r in res:
            row = next((x for x in rows if x["method"] == m and x["resolution"] == r), None)
            if row is None or "error" in row:
                cells += ["failed", "-"]
            else:
                cells += [f"{row['ms_median']:.1f} ({row['ms_mean']:.1f})", f"{row['peak_gb']:.2f}"]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    renderers = sorted({r.get("renderer", "?") for r in rows})
    lines += ["", f"NeRF renderer: {', '.join(renderers)}."]
    prim = result.get("primitives") or {}
    if prim:
        lines += ["", "Primitives: " + ", ".join(f"{k} = {v:.1f}" for k, v in prim.items()) + "."]
    errors = [r for r in rows if "error" in r]
    for r in errors:
        lines.append(f"- {r['method']} @ {r['resolution']}: {r['error']}")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(ROOT / "benchmarks"))
    ap.add_argument("--repo", default=None, help="where to write / reuse the random-weight repository")
    ap.add_argument("--arch", default="sd21", choices=("sd21", "tiny"))
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="float16")
    ap.add_argument("--methods", nargs="+", default=list(METHODS))
    ap.add_argument("--resolutions", nargs="+", type=int, default=list(RESOLUTIONS))
    ap.add_argument("--renderer", default="auto", help="representation.renderer (auto = occgrid on CUDA)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--max-steps", type=int, default=10000, help="trainer.max_steps (schedules)")
    ap.add_argument("--breakdown", action="store_true", help="only time the parts of a VSD step")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import diffusers

    repo = Path(args.repo or tempfile.mkdtemp(prefix=f"random-{args.arch}-"))
    if not (repo / "unet").is_dir():
        t0 = time.time()
        write_random_sd(repo, args.arch)
        print(f"wrote random {args.arch} repository to {repo} in {time.time() - t0:.1f}s", flush=True)
    if args.breakdown:
        parts = bench_breakdown(repo, args)
        print(json.dumps(parts, indent=1))
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "sd_gpu_breakdown.json").write_text(json.dumps(parts, indent=2))
        return
    workdir = Path(tempfile.mkdtemp(prefix="bench-sd-"))
    gpu = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu"
    result = {
        "command": "python scripts/bench_sd_gpu.py " + " ".join(sys.argv[1:]),
        "env": {"gpu": gpu, "torch": torch.__version__, "diffusers": diffusers.__version__},
        "arch": args.arch, "dtype": args.dtype, "warmup": args.warmup, "steps": args.steps, "rows": [],
    }
    try:
        result["primitives"] = bench_primitives(repo, args)
        print(result["primitives"], flush=True)
    except Exception as err:  # a reference number: never block the table
        result["primitives"] = {}
        print("primitives failed:", err, flush=True)
    renderer = args.renderer
    for res in args.resolutions:
        for method in args.methods:
            try:
                row = bench_one(repo, method, res, args, workdir, renderer)
            except Exception as err:
                traceback.print_exc()
                if renderer != "dense" and "nerfacc" in traceback.format_exc():
                    print("nerfacc's CUDA path failed; falling back to renderer=dense", flush=True)
                    renderer = "dense"
                    try:
                        row = bench_one(repo, method, res, args, workdir, renderer)
                    except Exception as err2:
                        row = {"method": method, "resolution": res, "error": repr(err2)[:300]}
                else:
                    row = {"method": method, "resolution": res, "error": repr(err)[:300]}
                gc.collect()
            result["rows"].append(row)
            print(json.dumps(row), flush=True)
            write(result, Path(args.out))  # after every row: a killed run keeps what it measured
    print(markdown(result))


def write(result: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "sd_gpu.json").write_text(json.dumps(result, indent=2))
    (out / "sd_gpu.md").write_text(markdown(result))


if __name__ == "__main__":
    main()
