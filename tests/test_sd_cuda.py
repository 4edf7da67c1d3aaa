"""Stable Diffusion on the GPU (``pytest -m cuda``, the device machine): fp16 numerics of the
tiny model, and one full-size step with SD 2.1-base's exact architecture (random weights).

SD21_RANDOM_REPO=<dir> reuses a repository written by scripts/bench_sd_gpu.py."""

from __future__ import annotations

import gc
import os
import sys
from pathlib import Path

import pytest
import torch

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]
os.environ["HF_HUB_OFFLINE"] = "1"
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(Path(__file__).parent))

from test_sd import _compose, write_tiny_sd  # noqa: E402

from src.backbones.sd import StableDiffusion  # noqa: E402
from src.cameras import ViewBatch  # noqa: E402


@pytest.fixture(scope="module")
def tiny_repo(tmp_path_factory) -> Path:
    return write_tiny_sd(tmp_path_factory.mktemp("tiny-sd"))


@pytest.fixture(scope="module")
def sd21_repo(tmp_path_factory) -> Path:
    env = os.environ.get("SD21_RANDOM_REPO")
    if env and (Path(env) / "unet").is_dir():
        return Path(env)
    from bench_sd_gpu import write_random_sd

    return write_random_sd(tmp_path_factory.mktemp("sd21-random"), "sd21")


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_fp16_cfg_lora_and_grads(tiny_repo, dtype):
    from src.scoremodels.lora import LoRAScore

    bb = StableDiffusion(path=str(tiny_repo), dtype=dtype, embedding_cache=None).cuda()
    assert bb.unet.dtype == getattr(torch, dtype) and bb.unet.device.type == "cuda"
    c = bb.conditioning("a ceramic lion", "", view_dependent=True)
    x = torch.randn(3, 4, 8, 8, device="cuda")
    t = torch.tensor([30, 400, 900], device="cuda")
    emb, null = c.select(torch.tensor([0, 1, 2])), c.null(3)
    batched = bb.eps(x, t, emb, null, 7.5)
    e_c, e_u = bb.predict_eps(x, t, emb), bb.predict_eps(x, t, null)
    assert batched.dtype == torch.float32
    torch.testing.assert_close(batched, e_u + 7.5 * (e_c - e_u), rtol=0.05, atol=0.05)
    before = bb.predict_eps(x, t, emb)
    psi = LoRAScore.for_backbone(bb, None, lr=None).cuda()
    g = torch.Generator().manual_seed(0)
    views = ViewBatch(index=torch.zeros(3, dtype=torch.long), view_idx=torch.zeros(3, dtype=torch.long),
                      cam=torch.randn(3, 16, generator=g)).to("cuda")
    for _ in range(3):
        logs = psi.fit_step(x, views, torch.Generator().manual_seed(1), emb)
    assert torch.isfinite(torch.tensor(logs["psi_loss"]))
    assert all(p.dtype == torch.float32 and p.grad is not None for p in psi.trainable_parameters())
    assert all(p.grad is None for n, p in bb.unet.named_parameters() if "lora_" not in n)
    assert torch.equal(bb.predict_eps(x, t, emb), before)  # adapters off = the prior, bit for bit
    assert (psi.eps(x, t, views.cam, emb) - before).abs().max() > 0


def test_full_size_vsd_step_on_nerf_one_unet(sd21_repo, tmp_path):
    """One UNet in memory: psi (LoRA + camera MLP) adds < 100 MB to SDS's footprint."""
    from src.trainer import Trainer

    def build(method: str):
        cfg = _compose([
            "backbone=diffusers", f"backbone.path={sd21_repo}", "backbone.dtype=float16",
            f"backbone.embedding_cache={tmp_path / 'emb'}", "representation=nerf", f"guidance={method}",
            "camera.height=64", "camera.width=64", "device=cuda", "trainer.progress=false",
        ])
        return Trainer(cfg, tmp_path / method)

    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    sds = build("sds")
    sds_mem = torch.cuda.memory_allocated() - base
    assert 1.5 < sds_mem / 2**30 < 2.5  # fp16 UNet 1.73 GB + VAE 0.17 GB
    del sds
    gc.collect()
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    vsd = build("vsd")
    vsd_mem = torch.cuda.memory_allocated() - base
    assert vsd_mem - sds_mem < 100 * 2**20, (vsd_mem, sds_mem)
    for step in range(2):
        logs = vsd.train_step(step)
    assert all(torch.isfinite(torch.tensor(float(v))) for v in logs.values()), logs
    grads = [p.grad for p in vsd.c.representation.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
