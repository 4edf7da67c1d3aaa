"""Train a small text-to-image latent diffusion model on a ShapesWorld (``make prior``), written
as a diffusers Stable Diffusion repository:

    python scripts/train_prior.py --out models/shapes_ldm                    # the shipped model
    python scripts/train_prior.py --out models/shapes_ldm_janus_front experiment=shapes_janus_front

    python scripts/train_prior.py --multiview --init-from models/shapes_ldm --out models/shapes_mvdream

``--multiview``: MVDream's layout, trained on the world's view sets (scripts/train_prior_multiview.py);
``--vae-from DIR``: the VAE of a model of the same world, its stage skipped.

Trailing ``key=value`` words are the project's config overrides (``src.api.compose``): the world
is ``backbone`` of that config (default: ``conf/backbone/shapes.yaml``, the default job's world).

What it writes into ``--out`` (loadable by ``StableDiffusionPipeline.from_pretrained(out)`` and
by ``backbone=diffusers backbone.path=out``, nothing in the backbone special to it):
``model_index.json``, ``unet/`` (UNet2DConditionModel, cross-attention), ``vae/``
(AutoencoderKL, 4x downsampling), ``text_encoder/`` (CLIPTextModel), ``tokenizer/``
(CLIPTokenizer over the world's words), ``scheduler/`` (SD's scaled-linear 1000-step DDPM
schedule, epsilon prediction), weights as fp16 safetensors; ``world.yaml`` (the world's
backbone config: the exact ShapesWorld metrics of runs on the model, src/backbones/sd.py),
``loss.png`` and ``train_log.json`` (loss curves, settings, times).

Training (Stable Diffusion's recipe at toy scale):

1. The VAE: reconstruction (MSE) + ``KL_WEIGHT`` x KL on the world's images; the latent scale
   ``vae.config.scaling_factor`` = 1 / std of the posterior means (SD's rule for choosing it).
2. The UNet and the text encoder together (no pretrained CLIP exists here): epsilon-prediction
   MSE at t ~ U{0..999} on latents drawn from the VAE's posterior, with an EMA of the weights
   (diffusers' ``EMAModel``; the EMA weights are written).

Captions follow the world's prompt grammar ``[a] [color] shape[, <view> view]``: each caption
drops its color with ``P_DROP_COLOR`` and its shape ("an object") with ``P_DROP_SHAPE``, appends a
view phrase with ``P_VIEW``, and is the empty caption (the unconditional branch of CFG, SD's
caption dropout) with ``P_UNCOND``. The image of a caption is then drawn from the world's own
prior of it, ``ShapesWorld.embed(caption)`` (front bias, view adherence and all), so the
model's target p(x | caption) is the exact prior's for every caption. Dropping the color
independently of the color makes "a cone" the equal mixture of its four colors, as in the world.

Seeded (batches, captions, noise and t from ``rng.Stream.PRIOR``; initial weights from
``rng.Stream.INIT``), resumable (``--work``/state.pt, written atomically every
``--checkpoint-every`` steps; a rerun continues from it and gives the same weights), progress
line with rate and ETA.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from src import rng  # noqa: E402
from src.cameras import VIEW_NAMES  # noqa: E402
from src.diffusion import sd_alphas_cumprod  # noqa: E402
from src.fileio import atomic_write  # noqa: E402
from src.loggers import Progress  # noqa: E402

log = logging.getLogger("train_prior")

# Caption grammar rates (module docstring). Color and shape are dropped independently of the
# image, so the conditional of a partial caption is the world's mixture over what was dropped.
P_DROP_COLOR = 0.3
P_DROP_SHAPE = 0.15
P_VIEW = 0.5
P_UNCOND = 0.1  # SD's caption dropout rate for the unconditional branch
KL_WEIGHT = 1e-6  # Stable Diffusion's autoencoder KL weight (LDM's kl-f8 config)
EMA_DECAY = 0.999
WARMUP_STEPS = 200  # linear lr warm-up of both stages (attention layers at lr 5e-4 from step 0 can diverge)
# SD 1.x / 2.x schedule (scheduler/scheduler_config.json of stable-diffusion-2-1-base)
BETA_START, BETA_END, T = 0.00085, 0.012, 1000
MAX_TOKENS = 16  # the longest caption is 7 tokens + BOS + EOS
STATE = "state.pt"


@dataclass
class Size:
    """Network widths and training lengths of one model size."""

    vae_channels: tuple[int, ...] = (32, 64, 64)  # 3 levels: 4x downsampling (32 px -> 8 x 8 x 4)
    unet_channels: tuple[int, ...] = (64, 128)
    unet_layers: int = 1
    unet_heads: int = 8
    norm_groups: int = 32
    text_dim: int = 64
    text_layers: int = 2
    vae_steps: int = 1500
    unet_steps: int = 8000
    vae_batch: int = 32
    unet_batch: int = 32
    vae_lr: float = 1e-3
    unet_lr: float = 5e-4


SIZES = {
    "small": Size(),
    # the test's model: seconds on a CPU, same code path
    "tiny": Size(vae_channels=(8, 16), unet_channels=(16, 32), unet_heads=2, norm_groups=8, text_dim=16,
                 text_layers=1, vae_steps=3, unet_steps=3, vae_batch=4, unet_batch=4),
}


# --- the world's text ------------------------------------------------------------------------
def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def caption(shape: str | None, color: str | None, view: str | None) -> str:
    """The world's grammar: "a red cone", "a cone, back view", "an object"."""
    head = " ".join(w for w in (color, shape or "object") if w)
    text = f"{article(head)} {head}"
    return f"{text}, {view} view" if view else text


def captions(world, views: tuple[str, ...] = VIEW_NAMES) -> list[str]:
    """Every caption of the grammar (shape or "object") x (color or none) x (view or none); "" last.
    ``views=()``: no view phrases (the multi-view model is told the camera instead)."""
    out = [caption(s, c, v) for s in (*world.shapes, None) for c in (*world.colors, None)
           for v in (*views, None)]
    return out + [""]


def caption_probs(world, views: tuple[str, ...] = VIEW_NAMES) -> torch.Tensor:
    """P(caption) over ``captions(world, views)`` from the drop rates (module docstring)."""
    p_view = P_VIEW if views else 0.0
    p = []
    for s in (*world.shapes, None):
        ps = (1 - P_DROP_SHAPE) / len(world.shapes) if s else P_DROP_SHAPE
        for c in (*world.colors, None):
            pc = (1 - P_DROP_COLOR) / len(world.colors) if c else P_DROP_COLOR
            for v in (*views, None):
                pv = p_view / len(views) if v else 1 - p_view
                p.append((1 - P_UNCOND) * ps * pc * pv)
    return torch.tensor(p + [P_UNCOND], dtype=torch.float64)


def caption_image_weights(world, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(keep (K,) bool, W (K', N)): the world's prior of each caption over its images; captions the
    world has no image for (a view its collection lacks, obeyed) are dropped."""
    keep, rows = [], []
    for text in texts:
        try:
            rows.append(world.embed(text).double())
            keep.append(True)
        except ValueError:
            keep.append(False)
    return torch.tensor(keep), torch.stack(rows)


def write_tokenizer(world, out: Path, max_tokens: int = MAX_TOKENS):
    """A CLIPTokenizer whose vocabulary is the world's words, one token each (BPE merges built
    until every word is one token), with every character as a fallback; saved to ``out``."""
    from transformers import CLIPTokenizer

    from src.backbones.shapes import ANY_SHAPE, ARTICLES

    words = [*ARTICLES, *world.shapes, *world.colors, ANY_SHAPE, *VIEW_NAMES, "view", ","]
    chars = sorted({c for w in words for c in w} | set("abcdefghijklmnopqrstuvwxyz"))
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for suffix in ("", "</w>"):
        for c in chars:
            vocab.setdefault(c + suffix, len(vocab))
    merges: list[tuple[str, str]] = []
    tmp = out / "_bpe"
    tmp.mkdir(parents=True, exist_ok=True)

    def load() -> CLIPTokenizer:
        (tmp / "vocab.json").write_text(json.dumps(vocab))
        (tmp / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
        return CLIPTokenizer(str(tmp / "vocab.json"), str(tmp / "merges.txt"), model_max_length=max_tokens)

    # a merge appended last never changes a word that already becomes one token (BPE applies the
    # lowest-ranked merge present, and such a word always has an earlier one until it is done)
    for w in words:
        while len(toks := load().tokenize(w)) > 1:
            merges.append((toks[0], toks[1]))
            vocab.setdefault(toks[0] + toks[1], len(vocab))
    tok = load()
    assert all(len(tok.tokenize(w)) == 1 for w in words), "a world word is not one token"
    for f in tmp.iterdir():
        f.unlink()
    tmp.rmdir()
    tok.save_pretrained(out)
    return tok


# --- the networks -----------------------------------------------------------------------------
def build_models(world, size: Size, tokenizer, seed: int, camera_dim: int | None = None):
    """(vae, unet, text_encoder), initial weights from the INIT stream. ``camera_dim``: the UNet
    gets MVDream's camera MLP (a projection class embedding of that width; scripts/
    train_prior_multiview.py)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    levels = len(size.unet_channels)
    with torch.random.fork_rng(devices=[]):
        rng.seed_global(seed, rng.Stream.INIT)
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, block_out_channels=size.vae_channels, layers_per_block=1,
            latent_channels=4, norm_num_groups=size.norm_groups, sample_size=world.resolution,
            down_block_types=("DownEncoderBlock2D",) * len(size.vae_channels),
            up_block_types=("UpDecoderBlock2D",) * len(size.vae_channels),
        )
        unet = UNet2DConditionModel(
            sample_size=world.resolution // 2 ** (len(size.vae_channels) - 1), in_channels=4, out_channels=4,
            block_out_channels=size.unet_channels, layers_per_block=size.unet_layers,
            down_block_types=("CrossAttnDownBlock2D",) * levels, up_block_types=("CrossAttnUpBlock2D",) * levels,
            cross_attention_dim=size.text_dim, attention_head_dim=size.unet_heads,
            norm_num_groups=size.norm_groups,
            **({} if camera_dim is None else {"class_embed_type": "projection",
                                              "projection_class_embeddings_input_dim": camera_dim}),
        )
        text = CLIPTextModel(CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=size.text_dim, intermediate_size=2 * size.text_dim,
            num_attention_heads=4 if size.text_dim % 4 == 0 else 1, num_hidden_layers=size.text_layers,
            max_position_embeddings=tokenizer.model_max_length, bos_token_id=0, eos_token_id=1, pad_token_id=1,
        ))
    return vae, unet, text


def token_ids(tokenizer, texts: list[str]) -> torch.Tensor:
    """(K, L) ids, padded as the backbone pads (src/backbones/sd.py: _encode_text)."""
    return tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids


def check_same_world(model: Path, world) -> None:
    """``model`` (a directory this script wrote) was trained on ``world``'s images: its world.yaml
    renders the same pixels (``ShapesWorld.world_key``), else SystemExit naming both."""
    from hydra.utils import instantiate

    file = Path(model) / "world.yaml"
    if not file.is_file():
        raise SystemExit(f"{model} has no world.yaml: its VAE was not trained on a ShapesWorld by this script")
    theirs = instantiate(OmegaConf.load(file))
    if theirs.world_key() != world.world_key():
        raise SystemExit(f"{model} was trained on another world ({file}: {theirs.world_spec()}); this one is "
                         f"{world.world_spec()}: train on its world's overrides or leave the VAE to train")


# --- training state (resumable) ---------------------------------------------------------------
def save_state(path: Path, state: dict) -> None:
    atomic_write(path, lambda f: torch.save(state, f))


def load_state(path: Path) -> dict | None:
    return torch.load(path, map_location="cpu", weights_only=False) if path.is_file() else None


class PriorTrainer:
    """The two stages over one world; ``run()`` resumes from ``work/state.pt`` when present."""

    camera_dim: int | None = None  # the UNet's camera input (the multi-view trainer's)

    def __init__(self, world, world_cfg, out: Path, work: Path, size: Size, seed: int = 0,
                 checkpoint_every: int = 500, device: str = "cpu", vae_from: Path | None = None):
        self.world, self.world_cfg, self.size, self.seed = world, world_cfg, size, seed
        self.out, self.work = Path(out), Path(work)
        self.checkpoint_every = int(checkpoint_every)
        self.vae_from = None if vae_from is None else Path(vae_from)
        if self.vae_from is not None:
            check_same_world(self.vae_from, world)
        self.out.mkdir(parents=True, exist_ok=True)
        self.work.mkdir(parents=True, exist_ok=True)
        self.tokenizer = write_tokenizer(world, self.out / "tokenizer")
        self.device = torch.device(device)
        self.vae, self.unet, self.text = (m.to(self.device) for m in build_models(
            world, size, self.tokenizer, seed, self.camera_dim))
        if self.vae_from is not None:  # that model's VAE, its architecture whatever the size's
            from diffusers import AutoencoderKL

            self.vae = AutoencoderKL.from_pretrained(self.vae_from, subfolder="vae", torch_dtype=torch.float32)
            self.vae.to(self.device)
        images = world.images().permute(0, 3, 1, 2).float() * 2.0 - 1.0  # (N, 3, R, R) in [-1, 1]
        self.images = images.to(self.device)
        self.set_captions()
        self.ids = token_ids(self.tokenizer, self.texts).to(self.device)
        self.abar = sd_alphas_cumprod(T, BETA_START, BETA_END).float().to(self.device)
        self.state = load_state(self.work / STATE) or self.initial_state()

    def set_captions(self) -> None:
        """``texts`` (K,), their probabilities ``caption_p`` (K,) and image weights ``image_w`` (K, N)."""
        texts = captions(self.world)
        keep, self.image_w = caption_image_weights(self.world, texts)
        self.texts = [t for t, k in zip(texts, keep.tolist()) if k]
        self.caption_p = caption_probs(self.world)[keep]

    def initial_state(self) -> dict:
        """A fresh run: the VAE stage first, or (``vae_from``) that model's VAE and the UNet stage."""
        state = {"stage": "vae", "step": 0, "losses": {"vae": [], "unet": []}, "seconds": 0.0}
        if self.vae_from is not None:
            state.update(stage="unet", vae={k: v.cpu() for k, v in self.vae.state_dict().items()},
                         scaling_factor=float(self.vae.config.scaling_factor))
        return state

    # one batch: caption indices (B,), image indices (B,), from the PRIOR stream of (stage, step)
    def batch(self, stage: int, step: int, B: int) -> tuple[torch.Tensor, torch.Tensor, torch.Generator]:
        g = rng.generator(self.seed, rng.Stream.PRIOR, stage * 10**7 + step)
        k = torch.multinomial(self.caption_p, B, replacement=True, generator=g)
        i = torch.multinomial(self.image_w[k], 1, generator=g)[:, 0]
        return k.to(self.device), i.to(self.device), g

    def randn(self, shape, g: torch.Generator) -> torch.Tensor:
        """Drawn on the CPU (the same numbers on every device), then moved."""
        return torch.randn(tuple(shape), generator=g).to(self.device)

    def _checkpoint(self, models: dict, opt, extra: dict | None = None) -> None:
        self.state.update({k: m.state_dict() for k, m in models.items()})
        self.state["opt"] = opt.state_dict()
        self.state.update(extra or {})
        save_state(self.work / STATE, self.state)

    def train_vae(self) -> None:
        s = self.size
        opt = torch.optim.AdamW(self.vae.parameters(), lr=s.vae_lr)
        if self.state["step"] > 0:
            self.vae.load_state_dict(self.state["vae"])
            opt.load_state_dict(self.state["opt"])
        self.vae.train()
        progress = Progress(s.vae_steps, self.state["step"], "prior vae")
        t0 = time.monotonic()
        for step in range(self.state["step"], s.vae_steps):
            _, i, g = self.batch(0, step, s.vae_batch)
            _warmup(opt, s.vae_lr, step)
            x = self.images[i]
            post = self.vae.encode(x).latent_dist
            z = post.mean + post.std * self.randn(post.mean.shape, g)
            rec = self.vae.decode(z).sample
            loss_rec = F.mse_loss(rec, x)
            loss = loss_rec + KL_WEIGHT * post.kl().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            self.state["losses"]["vae"].append(loss_rec.item())
            self.state["step"] = step + 1
            progress.update({"loss": self.state["losses"]["vae"][-1], "t": 0})
            if (step + 1) % self.checkpoint_every == 0 or step + 1 == s.vae_steps:
                self.state["seconds"] += time.monotonic() - t0
                t0 = time.monotonic()
                self._checkpoint({"vae": self.vae}, opt)
        progress.close()
        self.vae.eval().requires_grad_(False)
        with torch.no_grad():
            post = self.vae.encode(self.images).latent_dist
        # SD's rule: scale latents to unit variance (LDM Sec. 3.3 / the 0.18215 of SD 1.x)
        self.vae.register_to_config(scaling_factor=float(1.0 / post.mean.std()))
        self.state.update({"stage": "unet", "step": 0, "vae": self.vae.state_dict(),
                           "scaling_factor": self.vae.config.scaling_factor, "opt": None})
        save_state(self.work / STATE, self.state)

    def train_unet(self) -> None:
        from diffusers.training_utils import EMAModel

        s = self.size
        self.vae.load_state_dict(self.state["vae"])
        self.vae.register_to_config(scaling_factor=self.state["scaling_factor"])
        self.vae.eval().requires_grad_(False)
        with torch.no_grad():
            post = self.vae.encode(self.images).latent_dist
        mean, std = post.mean * self.vae.config.scaling_factor, post.std * self.vae.config.scaling_factor
        params = self.trainable()
        opt = torch.optim.AdamW(params, lr=s.unet_lr)
        ema = EMAModel(params, decay=EMA_DECAY, foreach=True)
        if self.state["step"] > 0:
            self.unet.load_state_dict(self.state["unet"])
            self.text.load_state_dict(self.state["text"])
            opt.load_state_dict(self.state["opt"])
            ema.load_state_dict(self.state["ema"])
            ema.to(self.device)  # loaded on the CPU
        self.unet.train()
        self.text.train()
        progress = Progress(s.unet_steps, self.state["step"], "prior unet")
        t0 = time.monotonic()
        for step in range(self.state["step"], s.unet_steps):
            _warmup(opt, s.unet_lr, step)
            loss, t = self.unet_loss(step, mean, std)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            ema.step(params)
            self.state["losses"]["unet"].append(loss.item())
            self.state["step"] = step + 1
            progress.update({"loss": self.state["losses"]["unet"][-1], "t": t})
            if (step + 1) % self.checkpoint_every == 0 or step + 1 == s.unet_steps:
                self.state["seconds"] += time.monotonic() - t0
                t0 = time.monotonic()
                self._checkpoint({"unet": self.unet, "text": self.text}, opt, {"ema": ema.state_dict()})
        progress.close()
        self.state["stage"] = "done"
        self._checkpoint({"unet": self.unet, "text": self.text}, opt, {"ema": ema.state_dict()})

    def trainable(self) -> list[torch.nn.Parameter]:
        """The weights of the UNet stage: the UNet and the text encoder, trained together."""
        return [*self.unet.parameters(), *self.text.parameters()]

    def unet_loss(self, step: int, mean: torch.Tensor, std: torch.Tensor) -> tuple[torch.Tensor, int]:
        """(epsilon MSE of step ``step``'s batch, its first t); ``mean``, ``std`` (N, 4, h, w): the
        scaled VAE posterior of every image."""
        k, i, g = self.batch(1, step, self.size.unet_batch)
        z0 = mean[i] + std[i] * self.randn(mean[i].shape, g)
        t = torch.randint(0, T, (len(i),), generator=g).to(self.device)
        eps = self.randn(z0.shape, g)
        a = self.abar[t].view(-1, 1, 1, 1)
        z_t = a.sqrt() * z0 + (1 - a).sqrt() * eps
        emb = self.text(self.ids[k])[0]
        return F.mse_loss(self.unet(z_t, t, encoder_hidden_states=emb).sample, eps), int(t[0])

    def run(self) -> Path:
        if self.state["stage"] == "done" and self.state["step"] < self.size.unet_steps:
            self.state["stage"] = "unet"  # a finished run asked for more UNet steps continues
        if self.state["stage"] == "vae":
            self.train_vae()
        if self.state["stage"] == "unet":
            self.train_unet()
        self.vae.load_state_dict(self.state["vae"])
        self.vae.register_to_config(scaling_factor=self.state["scaling_factor"])
        self.unet.load_state_dict(self.state["unet"])
        self.text.load_state_dict(self.state["text"])
        from diffusers.training_utils import EMAModel

        params = self.trainable()
        ema = EMAModel(params, decay=EMA_DECAY, foreach=True)
        ema.load_state_dict(self.state["ema"])
        ema.copy_to(params)  # the EMA weights are the model
        return self.write()

    def write(self) -> Path:
        """The diffusers repository (fp16 safetensors), world.yaml, loss curves, train_log.json."""
        from diffusers import DDPMScheduler

        for name, m in (("vae", self.vae), ("unet", self.unet), ("text_encoder", self.text)):
            m.eval().to("cpu", torch.float16).save_pretrained(self.out / name, safe_serialization=True)
            m.to(torch.float32)
        DDPMScheduler(num_train_timesteps=T, beta_schedule="scaled_linear", beta_start=BETA_START,
                      beta_end=BETA_END, prediction_type="epsilon", clip_sample=False,
                      steps_offset=1).save_pretrained(self.out / "scheduler")
        import diffusers

        (self.out / "model_index.json").write_text(json.dumps({
            "_class_name": "StableDiffusionPipeline", "_diffusers_version": diffusers.__version__,
            "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
            "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
            "scheduler": ["diffusers", "DDPMScheduler"], "safety_checker": [None, None],
            "feature_extractor": [None, None], "image_encoder": [None, None], "requires_safety_checker": False,
        }, indent=2) + "\n")
        (self.out / "world.yaml").write_text(
            "# The ShapesWorld this model was trained on (scripts/train_prior.py): its exact metrics score\n"
            "# runs on the model (src/backbones/sd.py: StableDiffusion.evaluate)\n" + OmegaConf.to_yaml(self.world_cfg))
        self.plot_losses(self.out / "loss.png")
        n_params = {name: sum(p.numel() for p in m.parameters())
                    for name, m in (("vae", self.vae), ("unet", self.unet), ("text_encoder", self.text))}
        (self.out / "train_log.json").write_text(json.dumps({
            "seed": self.seed, "size": asdict(self.size), "images": int(self.images.shape[0]),
            "captions": len(self.texts), "parameters": n_params, "train_seconds": round(self.state["seconds"], 1),
            "device": torch.cuda.get_device_name(self.device) if self.device.type == "cuda"
            else f"cpu ({torch.get_num_threads()} threads)",
            "rates": {"p_drop_color": P_DROP_COLOR, "p_drop_shape": P_DROP_SHAPE, "p_view": P_VIEW,
                      "p_uncond": P_UNCOND, "kl_weight": KL_WEIGHT, "ema_decay": EMA_DECAY},
            "final_loss": {k: _tail_mean(v) for k, v in self.state["losses"].items()},
            **self.log_extra(),
        }, indent=2) + "\n")
        return self.out

    def log_extra(self) -> dict:
        """More of the recipe for train_log.json (where the VAE came from)."""
        return {} if self.vae_from is None else {"vae_from": str(self.vae_from)}

    def plot_losses(self, path: Path) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(8, 3))
        for ax, (name, vals) in zip(axes, self.state["losses"].items()):
            ax.plot(vals, lw=0.5, alpha=0.4)
            w = max(1, len(vals) // 50)
            if len(vals) >= w:
                ax.plot(range(w - 1, len(vals)), torch.tensor(vals).unfold(0, w, 1).mean(1).tolist(), lw=1.2)
            ax.set_yscale("log")
            ax.set_title(f"{name} loss ({'reconstruction MSE' if name == 'vae' else 'epsilon MSE'})", fontsize=9)
            ax.set_xlabel("step", fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=90)
        plt.close(fig)


def _warmup(opt, lr: float, step: int) -> None:
    for group in opt.param_groups:
        group["lr"] = lr * min(1.0, (step + 1) / WARMUP_STEPS)


def _tail_mean(v: list[float], frac: float = 0.05) -> float | None:
    if not v:
        return None
    tail = v[-max(1, math.ceil(frac * len(v))):]
    return round(sum(tail) / len(tail), 6)


def world_from(overrides: list[str], camera: str | None = None):
    """(ShapesWorld, its backbone config, the camera group's config) of ``python -m src.train
    <overrides> [camera=<camera>]``, resolved."""
    from hydra.utils import instantiate

    from src.api import compose

    root = compose([*overrides, *([f"camera={camera}"] if camera else [])])
    cfg = root.backbone
    if not str(cfg.get("_target_", "")).endswith("ShapesWorld"):
        raise SystemExit(f"the world must be a ShapesWorld backbone; got {cfg.get('_target_')!r}")
    cfg, cam = (OmegaConf.create(OmegaConf.to_container(c, resolve=True)) for c in (cfg, root.camera))
    return instantiate(cfg), cfg, cam


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="the diffusers repository to write")
    ap.add_argument("--work", type=Path, default=None, help="training state (default outputs/prior/<out name>)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size", choices=sorted(SIZES), default="small")
    ap.add_argument("--vae-steps", type=int, default=None)
    ap.add_argument("--unet-steps", type=int, default=None)
    ap.add_argument("--checkpoint-every", type=int, default=500)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--device", default="cpu", help="cpu | cuda (the same recipe; other rounding)")
    ap.add_argument("--unet-batch", type=int, default=None, help="images a UNet step (views with --multiview)")
    ap.add_argument("--unet-lr", type=float, default=None, help="the UNet stage's learning rate (default: the size's)")
    ap.add_argument("--vae-from", type=Path, default=None,
                    help="take the VAE of this model directory (trained on the same world) and skip the VAE stage")
    ap.add_argument("--multiview", action="store_true",
                    help="MVDream's layout: a camera-conditioned UNet on the world's view sets "
                         "(scripts/train_prior_multiview.py)")
    ap.add_argument("--views", type=int, default=None, help="with --multiview: views a set (MVDream's 4)")
    ap.add_argument("--init-from", type=Path, default=None,
                    help="with --multiview: fine-tune this single-view model of the same world (MVDream's recipe)")
    ap.add_argument("overrides", nargs="*", help="config overrides choosing the world, e.g. experiment=...")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    size = SIZES[args.size]
    if args.vae_steps is not None:
        size = Size(**{**asdict(size), "vae_steps": args.vae_steps})
    if args.unet_steps is not None:
        size = Size(**{**asdict(size), "unet_steps": args.unet_steps})
    if args.unet_batch is not None:
        size = Size(**{**asdict(size), "unet_batch": args.unet_batch})
    if args.unet_lr is not None:
        size = Size(**{**asdict(size), "unet_lr": args.unet_lr})
    if not args.multiview and (args.views is not None or args.init_from is not None):
        ap.error("--views and --init-from go with --multiview")
    if args.init_from is not None and args.vae_from is not None:
        ap.error("--init-from takes the VAE of its model: leave --vae-from out")
    work = args.work or ROOT / "outputs" / "prior" / args.out.name
    if args.multiview:
        from scripts.train_prior_multiview import FINETUNE_LR, MultiViewPriorTrainer
        from src.backbones.mvdream import MVDREAM_VIEWS

        if args.init_from is not None and args.unet_lr is None:
            size = Size(**{**asdict(size), "unet_lr": FINETUNE_LR})

        world, world_cfg, camera_cfg = world_from(args.overrides, camera="multiview")
        trainer = MultiViewPriorTrainer(
            world, world_cfg, camera_cfg, args.out, work, size, args.seed, args.checkpoint_every, args.device,
            views=args.views or MVDREAM_VIEWS, vae_from=args.vae_from, init_from=args.init_from,
            overrides=args.overrides)
    else:
        world, world_cfg, _ = world_from(args.overrides)
        trainer = PriorTrainer(world, world_cfg, args.out, work, size, args.seed, args.checkpoint_every,
                               args.device, vae_from=args.vae_from)
    out = trainer.run()
    log.info("wrote %s", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
