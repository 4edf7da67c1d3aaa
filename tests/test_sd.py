"""Stable Diffusion backbone + LoRA psi, offline: tiny diffusers / transformers models built
from config in-process, saved like a Hub repo and loaded through the real from_pretrained path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"  # no test may touch the network

from src.backbones.sd import StableDiffusion, WeightsNotFound  # noqa: E402
from src.cameras import ViewBatch  # noqa: E402
from src.configs import guidance_names  # noqa: E402
from src.diffusion import alpha_sigma, bcast  # noqa: E402
from src.metrics.models import char_bpe_files  # noqa: E402
from tests.helpers import one_thread, two_finite_steps  # noqa: F401  (one_thread: autouse fixture)

ROOT = Path(__file__).resolve().parents[1]
# tiny CLIP: 77 positions like the real one would make the text encoder the slowest part
MAX_TOKENS = 16
TEXT_DIM = 32


def write_tiny_sd(root: Path, prediction_type: str = "epsilon", seed: int = 0) -> Path:
    """A diffusers text-to-image repository (model_index.json + 5 component folders)."""
    from diffusers import AutoencoderKL, DDPMScheduler, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TEXT_DIM, attention_head_dim=8, norm_num_groups=8,
    ).save_pretrained(root / "unet")
    AutoencoderKL(
        in_channels=3, out_channels=3, block_out_channels=(8, 16), latent_channels=4, norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        sample_size=16,
    ).save_pretrained(root / "vae")
    vocab, merges = char_bpe_files(root / "_bpe")
    tok = CLIPTokenizer(str(vocab), str(merges), model_max_length=MAX_TOKENS)
    tok.save_pretrained(root / "tokenizer")
    CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tok), hidden_size=TEXT_DIM, intermediate_size=37, num_attention_heads=4,
        num_hidden_layers=2, max_position_embeddings=MAX_TOKENS, bos_token_id=0, eos_token_id=1,
        pad_token_id=1,
    )).save_pretrained(root / "text_encoder")
    # SD 1.x / 2.x-base ship a PNDMScheduler config: the backbone reads it as DDPM's schedule
    sched = PNDMScheduler if prediction_type == "epsilon" else DDPMScheduler
    sched(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, prediction_type=prediction_type,
    ).save_pretrained(root / "scheduler")
    (root / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.42.1",
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", "DDPMScheduler"],
    }))
    return root




@pytest.fixture(scope="module")
def tiny_repo(tmp_path_factory) -> Path:
    return write_tiny_sd(tmp_path_factory.mktemp("tiny-sd"))


@pytest.fixture(scope="module")
def tiny_v_repo(tmp_path_factory) -> Path:
    return write_tiny_sd(tmp_path_factory.mktemp("tiny-sd-v"), prediction_type="v_prediction")


def make_backbone(repo: Path, cache: Path | None = None, **kw) -> StableDiffusion:
    return StableDiffusion(path=str(repo), dtype="float32", embedding_cache=str(cache) if cache else None, **kw)


def _latents(bb: StableDiffusion, B: int = 2, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    h = bb.resolution // 2  # the tiny VAE downsamples by 2
    return torch.randn(B, 4, h, h, generator=g)


def _views(B: int = 2, seed: int = 0) -> ViewBatch:
    g = torch.Generator().manual_seed(seed)
    zeros = torch.zeros(B, dtype=torch.long)
    return ViewBatch(index=zeros, view_idx=zeros, cam=torch.randn(B, 16, generator=g))


# --- the backbone ---------------------------------------------------------------------------
def test_loads_through_from_pretrained(tiny_repo):
    bb = make_backbone(tiny_repo)
    assert bb.space == "latent" and bb.prediction_type == "epsilon"
    assert bb.alphas_cumprod.dtype == torch.float64 and bb.num_timesteps == 1000
    assert bb.resolution == 16  # unet sample_size 8 x VAE downsampling 2
    assert not any(p.requires_grad for p in bb.unet.parameters())
    assert list(bb.state_dict()) == []  # guidance checkpoints do not carry the UNet


def test_batched_cfg_equals_separate_calls(tiny_repo):
    bb = make_backbone(tiny_repo)
    c = bb.conditioning("a ceramic lion", "blurry", view_dependent=True)
    x_t, t = _latents(bb, 3), torch.tensor([20, 500, 980])
    emb, null = c.select(torch.tensor([0, 1, 2])), c.null(3)
    s = 7.5
    batched = bb.eps(x_t, t, emb, null, s)
    e_c, e_u = bb.predict_eps(x_t, t, emb), bb.predict_eps(x_t, t, null)
    # float32 kernels round differently at batch 6 and batch 3: up to 1.6e-6 per call over 20
    # seeds here (4e-6 allowed); CFG's e_u + s (e_c - e_u) multiplies that by up to 1 + 2s
    # (CI once saw 1.4e-5 against a flat 1e-5)
    tol = 4e-6 * (1 + 2 * s)
    torch.testing.assert_close(batched, e_u + s * (e_c - e_u), rtol=tol, atol=tol)
    assert c.cond.shape == (4, MAX_TOKENS, TEXT_DIM)  # front / side / back / overhead
    assert not torch.equal(c.uncond, bb.embed(""))  # the negative prompt is the null branch


def test_v_prediction_is_converted(tiny_v_repo):
    bb = make_backbone(tiny_v_repo)
    assert bb.prediction_type == "v_prediction"
    x_t, t = _latents(bb), torch.tensor([100, 900])
    emb = bb.embed("a lion").expand(2, -1, -1)
    v = bb.unet(x_t, t, encoder_hidden_states=emb).sample
    alpha, sigma = alpha_sigma(bb.alphas_cumprod, t)
    expected = bcast(sigma, x_t) * x_t + bcast(alpha, x_t) * v  # METHODS.md
    torch.testing.assert_close(bb.predict_eps(x_t, t, emb), expected.float(), rtol=1e-5, atol=1e-6)
    # and the identity behind it: x0 = alpha x_t - sigma v, eps = sigma x_t + alpha v
    x0 = bcast(alpha, x_t) * x_t - bcast(sigma, x_t) * v
    torch.testing.assert_close(bcast(alpha, x_t) * x0 + bcast(sigma, x_t) * expected, x_t,
                               rtol=1e-5, atol=1e-5)


def test_embedding_cache_hit_on_second_run(tiny_repo, tmp_path):
    first = make_backbone(tiny_repo, tmp_path / "emb")
    c1 = first.conditioning("a ceramic lion", "", view_dependent=True)
    assert first.cache_misses == 5 and first.cache_hits == 0  # 4 view prompts + negative
    assert not list((tmp_path / "emb").glob(".tmp-*"))  # atomic writes leave no temp files
    second = make_backbone(tiny_repo, tmp_path / "emb")
    c2 = second.conditioning("a ceramic lion", "", view_dependent=True)
    assert second.cache_hits == 5 and second.cache_misses == 0
    assert second._text is None  # the text encoder was never loaded
    assert torch.equal(c1.cond, c2.cond) and torch.equal(c1.uncond, c2.uncond)
    other = make_backbone(tiny_repo, tmp_path / "emb")
    other.model_key = "local:another-model"  # a different model never reads these embeddings
    other.embed("a ceramic lion, front view")
    assert other.cache_misses == 1


def test_encode_resizes_keeps_graph_and_x_shape(tiny_repo):
    bb = make_backbone(tiny_repo)
    rgb = torch.rand(2, 12, 12, 3, requires_grad=True)
    x = bb.encode(rgb)  # resized 12 -> 16 (bilinear), VAE mean x scaling factor
    assert x.shape == (2, *bb.x_shape()) == (2, 4, 8, 8) and x.dtype == torch.float32
    x.sum().backward()
    assert rgb.grad is not None and rgb.grad.abs().sum() > 0
    assert bb.decode(x.detach()).shape == (2, 16, 16, 3)
    assert bb.x_shape(32, 16) == (4, 16, 8)  # latents of other render sizes (VAE factor 2 here)


def test_missing_weights_error_is_actionable(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(WeightsNotFound) as err:
        StableDiffusion(path="stabilityai/stable-diffusion-2-1-base", download=True)  # offline wins
    msg = str(err.value)
    assert "'stabilityai/stable-diffusion-2-1-base'" in msg
    assert str(tmp_path / "hub" / "models--stabilityai--stable-diffusion-2-1-base") in msg
    assert "hf download stabilityai/stable-diffusion-2-1-base" in msg and "backbone.path=" in msg
    assert "HF_HUB_OFFLINE is set" in msg
    with pytest.raises(WeightsNotFound, match="missing unet, vae"):
        StableDiffusion(path=str(tmp_path))  # a directory that is no diffusers repo
    with pytest.raises(WeightsNotFound, match="missing"):
        StableDiffusion.validate_config({"path": str(tmp_path), "dtype": "float16", "vae_mode": "mean"},
                                        "backbone")


# --- psi: LoRA on the same UNet ------------------------------------------------------------
def _psi(bb, **kw):
    from src.representations.base import Representation
    from src.scoremodels.lora import LoRAScore

    return LoRAScore(bb, Representation(), **kw)  # cam_dim 16: flattened camera-to-world


def test_lora_starts_at_prior_and_disabled_adapters_are_the_base_unet(tiny_repo):
    from diffusers import UNet2DConditionModel

    bb = make_backbone(tiny_repo)
    psi = _psi(bb, rank=2)
    x, views = _latents(bb), _views()
    emb = bb.embed("a lion").expand(2, -1, -1)
    t = torch.tensor([50, 700])
    torch.testing.assert_close(psi.eps(x, t, views.cam, emb), bb.predict_eps(x, t, emb), rtol=0, atol=0)
    for step in range(2):  # move LoRA and camera weights away from their zero init
        psi.fit_step(x, views, torch.Generator().manual_seed(step), emb)
    assert (psi.eps(x, t, views.cam, emb) - psi.eps(x, t, None, emb)).abs().max() > 0  # camera matters
    assert (psi.eps(x, t, None, emb) - bb.predict_eps(x, t, emb)).abs().max() > 0  # psi moved
    base = UNet2DConditionModel.from_pretrained(tiny_repo, subfolder="unet").eval()
    base.to(memory_format=torch.channels_last)  # the backbone's layout: same kernels, same bits
    ref = base(x, t, encoder_hidden_states=emb).sample
    assert torch.equal(bb.predict_eps(x, t, emb), ref)  # exactly the pretrained UNet
    assert len({id(bb.unet)} | {id(m) for m in [psi.backbone.unet]}) == 1  # one UNet in memory


def test_only_lora_and_camera_parameters_get_gradients(tiny_repo):
    bb = make_backbone(tiny_repo)
    psi = _psi(bb, rank=2)
    x, views = _latents(bb), _views()
    emb = bb.embed("a lion").expand(2, -1, -1)
    with torch.no_grad():  # zero-initialized layers (LoRA B, camera out) pass no gradient upstream
        psi.camera[2].weight.normal_(std=0.01)
        for n, p in psi._lora.items():
            if "lora_B" in n:
                p.normal_(std=0.01)
    loss = psi.dsm_loss(x, views, torch.Generator().manual_seed(0), emb)
    loss.backward()
    trainable = {id(p) for p in psi.trainable_parameters()}
    lora = [n for n, p in bb.unet.named_parameters() if id(p) in trainable]
    assert lora and all("lora_" in n for n in lora)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in psi.trainable_parameters())
    assert all(p.grad is None for p in bb.unet.parameters() if id(p) not in trainable)
    assert all(p.grad is None for p in bb.vae.parameters())
    assert all(p.dtype == torch.float32 for p in psi.trainable_parameters())


def test_lora_state_roundtrip(tiny_repo):
    bb = make_backbone(tiny_repo)
    psi = _psi(bb, rank=2)
    x, views = _latents(bb), _views()
    emb = bb.embed("a lion").expand(2, -1, -1)
    psi.fit_step(x, views, torch.Generator().manual_seed(0), emb)
    state = {k: v for k, v in psi.state_dict().items()}
    t = torch.tensor([300, 301])
    want = psi.eps(x, t, views.cam, emb)
    bb2 = make_backbone(tiny_repo)
    psi2 = _psi(bb2, rank=2)
    psi2.load_state_dict(state)
    assert torch.equal(psi2.eps(x, t, views.cam, emb), want)
    assert psi2.optimizer.state_dict()["state"]  # AdamW moments travel with it


# --- through the lead's trainer -------------------------------------------------------------
def _compose(overrides: list[str]):
    from src.api import compose

    return compose(overrides)


# every method on every representation an image backbone drives (3D ones at 16 px, few Gaussians)
REPRESENTATIONS = {
    "image": [],
    "nerf": ["camera.height=16", "camera.width=16"],
    "gaussians": ["camera.height=16", "camera.width=16", "representation.n_gaussians=256"],
}


@pytest.mark.parametrize("representation", list(REPRESENTATIONS))
@pytest.mark.parametrize("method", guidance_names())
def test_each_method_runs_on_a_tiny_sd(method, representation, tiny_repo, tmp_path):
    from src.trainer import Trainer

    cfg = _compose([
        "backbone=diffusers", f"backbone.path={tiny_repo}", "backbone.dtype=float32",
        f"backbone.embedding_cache={tmp_path / 'emb'}", f"representation={representation}",
        f"guidance={method}", "prompt=a ceramic lion", "device=cpu", "trainer.max_steps=2",
        "trainer.progress=false", "trainer.export=false", *REPRESENTATIONS[representation],
    ])
    trainer = Trainer(cfg, tmp_path / "run")
    logs = two_finite_steps(trainer)
    if trainer.c.guidance.psi is not None:  # VSD / ESD / SIM: psi is the LoRA on the same UNet
        assert type(trainer.c.guidance.psi).__name__ == "LoRAScore"
        assert trainer.c.guidance.psi.backbone.unet is trainer.c.backbone.unet
        assert "psi_loss" in logs


def test_missing_weights_through_the_trainer(tmp_path):
    """The issue's acceptance command, on a machine without the weights."""
    run_dir = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub")}
    proc = subprocess.run(
        [sys.executable, "-m", "src.train", "backbone=sd21", "guidance=esd", "representation=nerf",
         "prompt=a ceramic lion", f"hydra.run.dir={run_dir}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2  # a validation error, raised before any weights are touched
    err = proc.stderr + proc.stdout
    assert "stabilityai/stable-diffusion-2-1-base" in err
    assert "models--stabilityai--stable-diffusion-2-1-base" in err
    assert "hf download stabilityai/stable-diffusion-2-1-base" in err and "backbone.path=" in err
    assert not run_dir.exists(), sorted(p.name for p in run_dir.iterdir())
