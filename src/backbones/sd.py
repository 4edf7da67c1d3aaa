"""Stable Diffusion (any diffusers text-to-image UNet + VAE + CLIP) as a frozen latent prior.

``backbone=sd21`` / ``sd15`` / ``diffusers backbone.path=<id or directory>``. A model trained on an
analytic world carries it beside its weights (``world.yaml``, ``backbone.world``): runs on it
get that world's exact metrics (``evaluate``); its preset's tuning files give them the world's
cameras and render size (conf/tuning/camera/shapes_ldm_orbit.yaml). docs/methods.md
conventions: ``x`` is the VAE latent times ``vae.config.scaling_factor``; ``predict_eps``
returns an epsilon prediction (v-prediction models converted, ``eps = sigma x_t + alpha v``).

Habits (threestudio's StableDiffusionGuidance and ProlificDreamer's, without their magic
numbers):

- Weights load only from disk (a local diffusers directory or the Hugging Face cache). A
  missing model fails within seconds with the command that fetches it (``WeightsNotFound``);
  a run never starts a multi-GB download by surprise. ``download=true`` allows it, unless
  ``HF_HUB_OFFLINE=1``.
- UNet / VAE / text encoder frozen in fp16 or bf16 (``dtype``), eval mode, SDPA attention
  (diffusers' default processor), channels-last UNet, no gradient checkpointing (VSD/ESD/SIM
  toggle LoRA adapters between forwards, and SIM back-propagates through the UNet input).
- All guidance math stays float32: ``encode`` returns float32 latents, ``predict_eps``
  casts its input to the UNet dtype and its output back.
- Text embeddings (the prompt, its view-dependent variants, the negative prompt) are cached
  on disk, keyed by model identity + text; the text encoder is loaded only on a cache miss.
- The big components are *not* submodules: a checkpoint of a guidance (which holds the
  backbone) stays small, and ``.to(dtype)`` never up-casts the UNet. ``.to(device)`` /
  ``.cuda()`` still move them (``_apply``).
- ``self.unet`` is public: psi's LoRA (src/scoremodels/lora.py) adds adapters to this very
  object; ``predict_eps`` always runs with them disabled, i.e. the pretrained UNet.

Latent-space rendering: a representation that renders latents directly returns them as
``RenderOutput.x`` and the trainer skips ``encode`` (representation=image on SD).

Fast path (``fast=true``; docs/stable_diffusion.md "Fast path"): the prior's calls and the VAE
encode (+ its backward) replay CUDA graphs (src/backbones/graphs.py, ``self.graphs``), the VAE
runs plain attention and a many-block GroupNorm (src/backbones/fast_vae.py), and psi (lora.py)
shares the graphs and its rows join the prior's in one UNet call (``Backbone.eps_pair_with_psi``). ``fast=false`` is the eager reference
the ``-m cuda`` tests compare it with; off CUDA the graphs are off (logged) and only the fused
calls remain. ``compile=vae|unet|all`` adds ``torch.compile`` of those modules inside the graphs,
on a GPU only (``_compile_on``).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from src import cache, checks, weights
from src.backbones import fast_vae
from src.backbones.base import Backbone
from src.backbones.graphs import GraphCache
from src.diffusion import alpha_sigma, bcast, sd_alphas_cumprod, v_to_eps
from src.modules import hold
from src.weights import WeightsNotFound  # noqa: F401  (re-exported: the error users catch)

log = logging.getLogger(__name__)

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
# backbone.dtype=auto: float16 where a GPU is visible (SD's habit), float32 otherwise: the CPU has
# no fast float16 convolutions (docs/learned_prior.md: models/shapes_ldm's UNet on the CPU)
AUTO_DTYPE = "auto"
VAE_MODES = ("mean", "sample")
# backbone.compile: which components the fast path hands to torch.compile (inductor, static
# shapes) on a GPU, inside its CUDA graphs: the VAE's encoder, the UNet (prior and psi), or both
COMPILE = ("none", "vae", "unet", "all")
# Components of a diffusers text-to-image repository that this backbone reads.
COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
# embedding_cache="auto": <DISTILLERY_CACHE>/embeddings (src/cache.py)
EMBEDDING_SUB = "embeddings"


def resolve_weights(path: str, revision: str | None = None, cache_dir: str | None = None,
                    download: bool = False) -> tuple[Path, str]:
    """The diffusers text-to-image directory of ``path`` (see src/weights.py)."""
    return weights.resolve_weights(
        path, COMPONENTS, what="Stable Diffusion weights", key="backbone", revision=revision,
        cache_dir=cache_dir, download=download,
        patterns=[f"{c}/*" for c in COMPONENTS] + ["model_index.json"])


class StableDiffusion(Backbone):
    """A diffusers text-to-image model as a frozen epsilon predictor in latent space."""

    space = "latent"
    supported_representations = ("image", "3d")
    default_score_model = "lora"

    def __init__(
        self,
        path: str,
        revision: str | None = None,
        dtype: str = AUTO_DTYPE,
        vae_dtype: str | None = None,
        vae_mode: str = "mean",
        vae_resolution: int | None = None,
        channels_last: bool = True,
        download: bool = False,
        cache_dir: str | None = None,
        embedding_cache: str | None = "auto",
        default_prompt: str = "a DSLR photo of a ceramic lion",
        name: str = "sd",
        fast: bool = False,
        cuda_graphs: bool = True,
        compile: str = "none",
        world=None,
    ):
        super().__init__()
        self.name, self.default_prompt, self.vae_mode = name, default_prompt, vae_mode
        self.fast = bool(fast)
        self.check_compile({"compile": compile, "fast": self.fast}, "backbone")
        self.compile = compile
        # the fast path's CUDA graphs (prior, VAE, and psi's calls on this UNet); eager off CUDA
        self.graphs = GraphCache(enabled=self.fast and bool(cuda_graphs), name=f"{name} graphs")
        self.dtype = auto_dtype() if dtype == AUTO_DTYPE else DTYPES[dtype]
        self.root, self.model_key = resolve_weights(path, revision, cache_dir, download)

        from diffusers import AutoencoderKL, DDPMScheduler

        unet = self.load_unet()
        vae = AutoencoderKL.from_pretrained(
            self.root, subfolder="vae", torch_dtype=DTYPES[vae_dtype] if vae_dtype else self.dtype
        )
        for m in (unet, vae):
            m.eval().requires_grad_(False)
            m.disable_gradient_checkpointing()
        if channels_last:
            unet.to(memory_format=torch.channels_last)
        if self.fast:
            # the same function with kernels that fit SD's shapes (src/backbones/fast_vae.py), and
            # cuDNN's measured choice of convolution algorithms for the fixed shapes of the fast
            # path (a process-wide switch; CUDA graphs capture after the choice is made)
            fast_vae.accelerate(vae, channels_last=channels_last)
            torch.backends.cudnn.benchmark = True
        # held, not submodules (see the module docstring); _apply moves them
        hold(self, "unet", unet)
        hold(self, "vae", vae)
        self._text: tuple | None = None  # (tokenizer, text_encoder), loaded on a cache miss
        # the analytic world the model was trained on (<path>/world.yaml, src/configs.py:
        # model_world), built on the first evaluate: its exact metrics score runs on this model
        # (Hydra builds it from backbone.world's _target_; a plain config is built here, on demand)
        self.world_config = None if isinstance(world, Backbone) or not world else dict(world)
        self._world = None
        if isinstance(world, Backbone):
            hold(self, "_world", world)  # not a submodule: checkpoints stay without the world

        scheduler = DDPMScheduler.from_pretrained(self.root, subfolder="scheduler")
        self.prediction_type = scheduler.config.prediction_type
        if self.prediction_type not in ("epsilon", "v_prediction", "sample"):
            raise ValueError(f"unsupported prediction_type {self.prediction_type!r} in {self.root}")
        self.register_buffer("alphas_cumprod", _alphas_cumprod64(scheduler), persistent=False)
        if self.num_timesteps != 1000:  # docs/methods.md fixes T = 1000 (every schedule assumes it)
            raise ValueError(f"{path}: {self.num_timesteps} training timesteps, expected 1000")

        self.scaling_factor = float(vae.config.scaling_factor)
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        # what the prior sees: renders are resized to this before the VAE. SD 2.1-base:
        # 64 * 8 = 512, the resolution the UNet was trained at. (The render resolution is the
        # camera group's height / width: 64 by default, as threestudio renders for SD.)
        self.resolution = int(vae_resolution or unet.config.sample_size * self.vae_scale_factor)
        self.latent_channels = int(vae.config.latent_channels)
        if embedding_cache == "auto":
            embedding_cache = str(cache.root() / EMBEDDING_SUB)
        self.embedding_cache = Path(embedding_cache).expanduser() if embedding_cache else None
        self._store: cache.TensorCache | None = None  # opened at the first embedding
        self.cache_hits = self.cache_misses = 0
        self._memo: dict[str, Tensor] = {}
        self._adapters_enabled = False  # psi toggles peft adapters on self.unet (lora.py)
        self.adapter_parameters: list[torch.nn.Parameter] = []  # psi's LoRA weights (lora.py)
        self._tuner_cache: tuple[list, int] = ([], -1)  # (peft layers, adapter count) of tuner_layers
        if self.fast:
            log.info("%s: fast path on (fused UNet calls%s)", name,
                     ", CUDA graphs where on a GPU" if self.graphs.enabled else "; CUDA graphs off")

    def load_unet(self):
        """The frozen UNet of ``self.root`` in ``self.dtype`` (MVDream reads its own file)."""
        from diffusers import UNet2DConditionModel

        return UNet2DConditionModel.from_pretrained(self.root, subfolder="unet", torch_dtype=self.dtype)

    def with_psi_camera(self, emb: Tensor, cam: Tensor, psi_rows: Tensor | None = None) -> Tensor:
        """psi's text embedding for its camera ``cam`` (B, 16): unchanged here (the LoRA psi adds its
        own camera MLP); a prior with a native camera input (MVDream) writes it in."""
        return emb

    @classmethod
    def check_config(cls, cfg, key):
        """The trainer's pre-build check (no allocation, no writes), weights on disk last."""
        checks.choice(cfg, "dtype", f"{key}.dtype", (*DTYPES, AUTO_DTYPE))
        if cfg.get("vae_dtype") is not None:
            checks.choice(cfg, "vae_dtype", f"{key}.vae_dtype", DTYPES)
        checks.choice(cfg, "vae_mode", f"{key}.vae_mode", VAE_MODES)
        checks.number(cfg, "vae_resolution", f"{key}.vae_resolution", lo=8, integer=True, optional=True)
        for flag in ("fast", "cuda_graphs"):
            if flag in cfg:
                checks.choice(cfg, flag, f"{key}.{flag}", (True, False))
        if "compile" in cfg:
            cls.check_compile(cfg, key)
        resolve_weights(str(cfg.get("path")), cfg.get("revision"), cfg.get("cache_dir"),
                        bool(cfg.get("download", False)))

    @staticmethod
    def check_compile(cfg, key: str) -> None:
        """backbone.compile is one of COMPILE and, unless none, comes with fast=true (the config
        check and the constructor share it)."""
        checks.choice(cfg, "compile", f"{key}.compile", COMPILE)
        if cfg.get("compile") != "none" and cfg.get("fast") is not True:
            raise checks.ConfigError(f"{key}.compile={cfg.get('compile')!r} needs {key}.fast=true "
                                     "(the eager path is the reference)")

    # --- device handling: the components follow the module, their dtype does not --------
    def _apply(self, fn, recurse=True):
        probe = fn(torch.zeros((), dtype=torch.float32, device=self.alphas_cumprod.device))
        abar = self.alphas_cumprod.to(probe.device)  # keep float64 whatever fn casts to
        super()._apply(fn, recurse)
        self.alphas_cumprod = abar
        for m in self.components():
            m.to(probe.device)
        self.graphs.clear()  # captured kernels read the old storages
        self._compile_on(probe.device)
        return self

    def _compile_on(self, device: torch.device) -> None:
        """backbone.compile: torch.compile the chosen modules once they live on a GPU (the CPU
        keeps them eager: the suite tests the eager path there). ``Module.compile`` compiles in
        place, so peft's adapters added later and ``load_state_dict`` reach the compiled call
        (dynamo's guards recompile on a changed module); the graphs capture the compiled kernels."""
        on = self.compile != "none" and device.type == "cuda"
        if on:
            # a compiled backward may reuse ("donate") its saved activations' buffers, which
            # forbids retain_graph=True: GraphCache.with_input_grad captures the backward with it
            # (the forward's saved tensors must outlive the capture: other graphs share the pool).
            # Found on an NVIDIA H200: the VAE encode's graph failed with the donated-buffer error.
            import torch._functorch.config as functorch_config

            functorch_config.donated_buffer = False
        for part, m in (("vae", self.vae.encoder), ("unet", self.unet)):
            if on and self.compile in (part, "all"):
                if getattr(m, "_compiled_call_impl", None) is None:
                    m.compile(dynamic=False)
            else:
                m._compiled_call_impl = None

    def components(self) -> list[torch.nn.Module]:
        return [self.unet, self.vae] + ([self._text[1]] if self._text else [])

    @property
    def device(self) -> torch.device:
        return self.alphas_cumprod.device

    # --- text -------------------------------------------------------------------------
    def _cache_entry(self, text: str) -> tuple[str, dict]:
        """(file name, key) of a prompt's verified cache entry (src/cache.py)."""
        name = hashlib.sha256(f"{self.model_key}\n{text}".encode()).hexdigest()[:32]
        return f"{name}.pt", {"model": self.model_key, "text": text}

    def _text_encoder(self):
        if self._text is None:
            from transformers import CLIPTextModel, CLIPTokenizer

            tok = CLIPTokenizer.from_pretrained(self.root, subfolder="tokenizer")
            enc = CLIPTextModel.from_pretrained(self.root, subfolder="text_encoder", torch_dtype=self.dtype)
            enc.eval().requires_grad_(False).to(self.device)
            self._text = (tok, enc)
        return self._text

    @torch.no_grad()
    def _encode_text(self, text: str) -> Tensor:
        tok, enc = self._text_encoder()
        ids = tok(
            [text], padding="max_length", max_length=tok.model_max_length, truncation=True,
            return_tensors="pt",
        ).input_ids.to(self.device)
        # last_hidden_state: SD 2.x checkpoints already drop CLIP's last layer in their config
        return enc(ids)[0][0].float().cpu()

    def embed(self, text: str) -> Tensor:
        """(L, D) float32 token embeddings of one prompt, on self.device (cached)."""
        if text not in self._memo:
            if self._store is None and self.embedding_cache is not None:
                self._store = cache.TensorCache("", self.embedding_cache)
            name, key = self._cache_entry(text)
            emb = self._store.load(name, key, dtype=torch.float32) if self._store is not None else None
            if emb is not None and emb.dim() == 2:  # (L, D)
                self.cache_hits += 1
            else:
                emb = self._encode_text(text)
                self.cache_misses += 1
                if self._store is not None:
                    self._store.save(name, emb, key)
            self._memo[text] = emb
        return self._memo[text].to(self.device)

    def validate_prompt(self, prompt: str) -> None:
        self.check_prompt(None, prompt)

    @classmethod
    def check_prompt(cls, cfg, prompt):
        """CLIP tokenizes anything; only empty prompts are refused."""
        if not prompt or not prompt.strip():
            raise ValueError("prompt is empty: Stable Diffusion needs a text prompt (prompt=...)")

    # --- space ------------------------------------------------------------------------
    def x_shape(self, height: int | None = None, width: int | None = None) -> tuple[int, ...]:
        """(latent_channels, H / f, W / f) for images of H x W (default: the VAE resolution)."""
        H = int(height or self.resolution)
        W = int(width or H)
        f = self.vae_scale_factor
        return (self.latent_channels, H // f, W // f)

    def encode(self, rgb: Tensor) -> Tensor:
        """(B, H, W, 3) in [0, 1] -> latents (B, 4, R/8, R/8) float32, keeping the graph.

        Fast path: forward and backward replayed from CUDA graphs (posterior mean only; a
        sampled posterior draws noise, which stays eager)."""
        if self.fast and self.vae_mode == "mean":
            return self.graphs.with_input_grad("vae_encode", self._encode, (rgb,))
        return self._encode(rgb)

    def _encode(self, rgb: Tensor) -> Tensor:
        img = rgb.permute(0, 3, 1, 2)
        if img.shape[-2:] != (self.resolution, self.resolution):
            # threestudio: F.interpolate(rgb, (512, 512), mode="bilinear", align_corners=False)
            img = F.interpolate(img, (self.resolution, self.resolution), mode="bilinear", align_corners=False)
        img = (img * 2.0 - 1.0).to(self.vae.dtype)
        dist = self.vae.encode(img).latent_dist
        z = dist.mean if self.vae_mode == "mean" else dist.sample()
        return z.float() * self.scaling_factor

    def decode(self, x: Tensor) -> Tensor:
        """Latents (B, 4, h, w) -> (B, H, W, 3) in [0, 1], keeping the graph (rewards)."""
        img = self.vae.decode((x / self.scaling_factor).to(self.vae.dtype)).sample
        return ((img.float() + 1.0) / 2.0).clamp(0.0, 1.0).permute(0, 2, 3, 1)

    # --- exact metrics of a model trained on an analytic world ------------------------------
    def world(self):
        """The analytic backbone of ``world.yaml`` beside the weights (built once), or None."""
        if self._world is None and self.world_config is not None:
            from hydra.utils import instantiate

            hold(self, "_world", instantiate(self.world_config))
        return self._world

    def evaluate(self, samples: Tensor, views, prompt: str) -> dict[str, float]:
        """The world's exact metrics of renders ``samples`` at ``views`` (precision, mode_id, rmse,
        janus_rate: src/backbones/shapes_metrics.py); {} for a model without a world."""
        world = self.world()
        return {} if world is None else world.evaluate(samples, views, prompt)

    # --- the model --------------------------------------------------------------------
    @contextlib.contextmanager
    def adapters(self, enabled: bool):
        """Run self.unet with peft adapters on (psi) or off (the pretrained prior)."""
        previous = self._adapters_enabled
        self._set_adapters(enabled)
        try:
            yield self.unet
        finally:
            self._set_adapters(previous)

    def _set_adapters(self, enabled: bool) -> None:
        if enabled == self._adapters_enabled:
            return
        # the peft layers themselves (cached by tuner_layers): unet.enable_adapters() would walk
        # all ~2k UNet modules twice per psi call
        for layer in self.tuner_layers():
            layer.enable_adapters(enabled)
        # peft also flips requires_grad of the adapter weights, and autograd drops the gradient of
        # a leaf that no longer requires it when backward runs, i.e. after this context exits.
        # psi's weights stay trainable (the disabled branch never reads them).
        for p in self.adapter_parameters:
            p.requires_grad_(True)
        self._adapters_enabled = enabled

    def tuner_layers(self) -> list:
        """peft's adapter-carrying layers inside self.unet (empty before psi adds LoRA)."""
        if not getattr(self.unet, "_hf_peft_config_loaded", False):
            return []
        n = len(self.unet.peft_config)
        if self._tuner_cache[1] != n:
            from peft.tuners.tuners_utils import BaseTunerLayer

            layers = [m for m in self.unet.modules() if isinstance(m, BaseTunerLayer)]
            self._tuner_cache = (layers, n)
        return self._tuner_cache[0]

    def unet_output_to_eps(self, x_t: Tensor, t: Tensor, out: Tensor) -> Tensor:
        """Convert the UNet's raw output (its prediction_type) to epsilon, float32."""
        out = out.float()
        if self.prediction_type == "epsilon":
            return out
        if self.prediction_type == "v_prediction":
            return v_to_eps(x_t.float(), out, self.alphas_cumprod, t).float()
        alpha, sigma = alpha_sigma(self.alphas_cumprod, t)  # "sample": x0 prediction
        return ((x_t.float() - bcast(alpha, x_t) * out) / bcast(sigma, x_t)).float()

    def unet_forward(self, x_t: Tensor, t: Tensor, emb: Tensor, **kwargs) -> Tensor:
        """Raw UNet output, float32, whatever adapter state is set."""
        out = self.unet(
            x_t.to(self.unet.dtype), t, encoder_hidden_states=emb.to(self.unet.dtype), **kwargs
        ).sample
        return self.unet_output_to_eps(x_t, t, out)

    def predict_eps(self, x_t: Tensor, t: Tensor, emb: Tensor) -> Tensor:
        """e(x_t, t, y) of the pretrained UNet (adapters off): (B, 4, h, w), (B,), (B, L, D).

        Fast path: replayed from a CUDA graph unless x_t needs a gradient (SIM)."""
        if self.fast and not (torch.is_grad_enabled() and x_t.requires_grad):
            return self.graphs.forward("prior", self._prior_eps, (x_t, t, emb))
        return self._prior_eps(x_t, t, emb)

    def _prior_eps(self, x_t: Tensor, t: Tensor, emb: Tensor) -> Tensor:
        with self.adapters(False):
            return self.unet_forward(x_t, t, emb)


def auto_dtype() -> torch.dtype:
    """backbone.dtype=auto (AUTO_DTYPE): float16 with a GPU, float32 on a CPU-only machine."""
    return torch.float16 if torch.cuda.is_available() else torch.float32


def _alphas_cumprod64(scheduler) -> Tensor:
    """abar (T,) in float64. diffusers computes it in float32; recompute exactly when we can."""
    cfg = scheduler.config
    if cfg.get("trained_betas") is None and cfg.beta_schedule == "scaled_linear":
        return sd_alphas_cumprod(cfg.num_train_timesteps, cfg.beta_start, cfg.beta_end)
    return torch.cumprod(1.0 - scheduler.betas.double(), dim=0)


