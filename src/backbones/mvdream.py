"""MVDream (Shi et al. 2023, "MVDream: Multi-view Diffusion for 3D Generation") as a frozen
multi-view latent prior: ``backbone=mvdream``.

MVDream is Stable Diffusion 2.1-base whose UNet denoises the V views of one object jointly and
is told each view's camera:

- **camera embedding**: the view's normalized 4x4 camera-to-world matrix (16 numbers) through
  Linear(16, 1280) - SiLU - Linear(1280, 1280), added to the timestep embedding. This is
  diffusers' ``class_embed_type="projection"`` with ``projection_class_embeddings_input_dim=16``
  (``TimestepEmbedding``: linear_1, SiLU, linear_2), fed through ``class_labels``.
  Normalization (MVDream's ``camera_utils.normalize_camera``): the camera's position scaled onto
  the unit sphere, the matrix flattened row-major. Distillery's c2w is threestudio's (z-up world,
  OpenGL camera axes), which MVDream's threestudio guidance feeds as it is.
- **cross-view self-attention**: attn1 of every transformer block attends over all V views'
  tokens (MVDream's ``BasicTransformerBlock3D``: ``(b f) l c -> b (f l) c`` around attn1);
  cross-attention (attn2) stays per view. Here an attention processor (``MultiViewAttnProcessor``)
  reshapes around diffusers' own ``AttnProcessor2_0``; V comes through ``cross_attention_kwargs``.

Rows of a UNet call are taken in consecutive sets of V (``views_per_set``, the camera group's
``camera=multiview``), as ShapesWorld's multi-view prior takes them; a last set of fewer rows
attends over its own views (the DSD trajectory's unposed rows).

Weights: the official ``sd-v2.1-base-4view.pt`` (LDM key layout: ``model.diffusion_model.*``,
camera MLP ``camera_embed.{0,2}``), read from disk (``backbone.checkpoint``, or the Hugging Face
cache of ``MVDream/MVDream``) and converted with diffusers' own ``convert_ldm_unet_checkpoint``
plus the camera keys (``convert_unet_checkpoint``). The VAE, the OpenCLIP text encoder, the
tokenizer and the noise schedule are SD 2.1-base's (MVDream fine-tuned the UNet only; its
``sd-v2-base.yaml`` has SD 2.1's VAE, penultimate-layer OpenCLIP and scaled-linear betas), read
from ``backbone.path`` as ``backbone=sd21`` reads them. 256 px: the UNet's sample size is 32.

Conditioning: a prompt's embedding is its text tokens plus one row holding the camera
(``embed``: (L + 1, D), the camera row zero = no camera); ``condition_on_views`` writes each
view's normalized camera into that row, for the null prompt too (MVDream's CFG tells both
branches the camera). psi (LoRA, ``score_model=lora``) is conditioned on each view's camera
through the same native camera MLP (``with_psi_camera``): at step 0 psi equals the prior at
every camera; the null camera (dropout) is the zero camera.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from src import checks, weights
from src.backbones.sd import StableDiffusion
from src.cameras import CAM_DIM

MVDREAM_REPO = "MVDream/MVDream"  # mvdream/model_zoo.py: PRETRAINED_MODELS["sd-v2.1-base-4view"]
MVDREAM_FILE = "sd-v2.1-base-4view.pt"
LDM_UNET_PREFIX = "model.diffusion_model."  # LatentDiffusionInterface.model.diffusion_model
# MultiViewUNetModel.camera_embed = Sequential(linear, SiLU, linear) -> diffusers' TimestepEmbedding
CAMERA_KEYS = {
    "class_embedding.linear_1.weight": "camera_embed.0.weight",
    "class_embedding.linear_1.bias": "camera_embed.0.bias",
    "class_embedding.linear_2.weight": "camera_embed.2.weight",
    "class_embedding.linear_2.bias": "camera_embed.2.bias",
}
# sd-v2-base.yaml: image_size 32 (latents) x the VAE's 8 = 256 px; camera_dim 16
MVDREAM_SAMPLE_SIZE = 32
# mvdream/camera_utils.py normalize_camera: translation / (||translation|| + 1e-8)
CAMERA_NORM_EPS = 1e-8
# MVDream's n_view (threestudio-mvdream's RandomMultiviewCameraDataModule default)
MVDREAM_VIEWS = 4


def unet_config(sd_config: dict) -> dict:
    """MVDream's UNet config from SD 2.1-base's (diffusers keys): the camera MLP as a projection
    class embedding of width 16, sample size 32."""
    cfg = {k: v for k, v in dict(sd_config).items() if not k.startswith("_")}
    cfg.update(class_embed_type="projection", projection_class_embeddings_input_dim=CAM_DIM,
               sample_size=MVDREAM_SAMPLE_SIZE)
    return cfg


def normalize_camera(c2w: Tensor) -> Tensor:
    """MVDream's camera input: (B, 4, 4) or (B, 16) c2w -> (B, 16), position on the unit sphere."""
    m = c2w.reshape(-1, 4, 4).clone()
    t = m[:, :3, 3]
    m[:, :3, 3] = t / (t.norm(dim=1, keepdim=True) + CAMERA_NORM_EPS)
    return m.reshape(-1, CAM_DIM)


def convert_unet_checkpoint(state: dict[str, Tensor], config: dict) -> dict[str, Tensor]:
    """The official LDM-layout state dict (UNet keys under ``model.diffusion_model.``; VAE and
    text encoder keys ignored) -> diffusers' UNet2DConditionModel keys, camera MLP included."""
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    unet = {k: v for k, v in state.items() if k.startswith(LDM_UNET_PREFIX)}
    missing = [v for v in CAMERA_KEYS.values() if LDM_UNET_PREFIX + v not in unet]
    if not unet or missing:
        raise ValueError(f"not an MVDream checkpoint: no {LDM_UNET_PREFIX}* UNet keys" if not unet else
                         f"not an MVDream checkpoint: no camera MLP ({', '.join(missing)})")
    # diffusers' helper maps a projection class embedding from SDXL's label_emb; MVDream's is
    # camera_embed: convert the rest with no class embedding, then map the camera keys
    out = convert_ldm_unet_checkpoint(unet, {**config, "class_embed_type": None})
    for new, old in CAMERA_KEYS.items():
        out[new] = unet[LDM_UNET_PREFIX + old]
    return out


def resolve_checkpoint(path: str | None, cache_dir: str | None = None) -> Path:
    """The official checkpoint on disk: ``path``, or ``MVDREAM_FILE`` in the Hugging Face cache of
    ``MVDREAM_REPO``; WeightsNotFound naming the file and the command that fetches it."""
    fetch = f"hf download {MVDREAM_REPO} {MVDREAM_FILE}"
    if path:
        p = Path(path).expanduser()
        if p.is_file() or (p / "config.json").is_file():  # the file, or a diffusers UNet folder
            return p.resolve()
        raise weights.WeightsNotFound(
            f"MVDream weights are not available on this machine: no file {p}.\n"
            f"  fetch them:   {fetch}   (then leave backbone.checkpoint=null, or point it at the file)")
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(hf_hub_download(MVDREAM_REPO, MVDREAM_FILE, cache_dir=cache_dir, local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError, OSError) as err:
        raise weights.WeightsNotFound(
            f"MVDream weights {MVDREAM_REPO}/{MVDREAM_FILE} are not available on this machine (not in "
            f"the Hugging Face cache).\n  looked in:\n    {weights.hub_cache_dir(MVDREAM_REPO, cache_dir)}\n"
            f"  fetch them:   {fetch}\n  or point backbone.checkpoint at a local copy of {MVDREAM_FILE}"
        ) from err


def load_state_dict(path: Path) -> dict[str, Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state.get("state_dict", state)  # Lightning-style checkpoints nest it


class MultiViewAttnProcessor:
    """diffusers' AttnProcessor2_0, with self-attention over all V views' tokens.

    Self-attention (no encoder states, attn1): queries, keys and values are projected per view
    (so a LoRA on to_q / to_k / to_v / to_out sees one row per view, as psi's row mask needs), then
    attended as sets of V consecutive rows, (B, V L, C) (MVDream's ``(b f) l c -> b (f l) c``),
    and split back; a last set of fewer rows attends over its own. Cross-attention (attn2) and
    V = 1: diffusers' processor itself.
    """

    def __init__(self):
        from diffusers.models.attention_processor import AttnProcessor2_0

        self.inner = AttnProcessor2_0()

    def __call__(self, attn, hidden_states: Tensor, encoder_hidden_states: Tensor | None = None,
                 attention_mask: Tensor | None = None, temb: Tensor | None = None, num_views: int = 1,
                 **kwargs) -> Tensor:
        N = hidden_states.shape[0]
        if (encoder_hidden_states is not None or num_views == 1 or N == 1 or hidden_states.ndim != 3
                or attention_mask is not None or attn.norm_q is not None or attn.group_norm is not None):
            return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, temb, **kwargs)
        _, L, C = hidden_states.shape
        q, k, v = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        full = N // num_views * num_views
        out = []
        for rows, V in ((slice(0, full), num_views), (slice(full, N), N - full)):
            if rows.stop == rows.start:
                continue
            n = rows.stop - rows.start
            # (n, L, C) -> (n / V, heads, V L, d): the V views' tokens are one sequence
            qs, ks, vs = (z[rows].reshape(n // V, V * L, attn.heads, -1).transpose(1, 2) for z in (q, k, v))
            o = torch.nn.functional.scaled_dot_product_attention(qs, ks, vs)
            out.append(o.transpose(1, 2).reshape(n, L, -1))
        h = torch.cat(out) if len(out) > 1 else out[0]
        h = attn.to_out[1](attn.to_out[0](h.to(q.dtype)))
        if attn.residual_connection:
            h = h + hidden_states
        return h / attn.rescale_output_factor


def multiview_unet(unet) -> None:
    """Give every attention layer of ``unet`` the multi-view processor (in place)."""
    unet.set_attn_processor(MultiViewAttnProcessor())


class MVDream(StableDiffusion):
    """MVDream's multi-view UNet (diffusers) with SD 2.1-base's VAE and text encoder."""

    def __init__(self, *args, checkpoint: str | None = None, views_per_set: int = MVDREAM_VIEWS,
                 name: str = "mvdream", **kwargs):
        self.checkpoint_path = resolve_checkpoint(checkpoint, kwargs.get("cache_dir"))  # fail in seconds
        self.views_per_set = int(views_per_set)
        super().__init__(*args, name=name, **kwargs)

    @classmethod
    def check_config(cls, cfg, key):
        checks.number(cfg, "views_per_set", f"{key}.views_per_set", lo=1, integer=True)
        resolve_checkpoint(cfg.get("checkpoint"), cfg.get("cache_dir"))
        super().check_config(cfg, key)

    def load_unet(self):
        """The official checkpoint, converted, in SD 2.1-base's UNet architecture plus the camera MLP;
        or a diffusers UNet folder of that architecture (a converted copy, the benchmark's random one)."""
        from diffusers import UNet2DConditionModel

        if self.checkpoint_path.is_dir():
            cfg = UNet2DConditionModel.load_config(self.checkpoint_path)
            if cfg.get("class_embed_type") != "projection" or cfg.get("projection_class_embeddings_input_dim") != CAM_DIM:
                raise ValueError(f"{self.checkpoint_path} is not an MVDream UNet: no camera MLP "
                                 f"(class_embed_type={cfg.get('class_embed_type')!r})")
            unet = UNet2DConditionModel.from_pretrained(self.checkpoint_path, torch_dtype=self.dtype)
            multiview_unet(unet)
            return unet
        config = unet_config(UNet2DConditionModel.load_config(self.root, subfolder="unet"))
        with torch.device("meta"):
            unet = UNet2DConditionModel.from_config(config)
        state = convert_unet_checkpoint(load_state_dict(self.checkpoint_path), config)
        unet.load_state_dict({k: v.to(self.dtype) for k, v in state.items()}, strict=True, assign=True)
        multiview_unet(unet)
        return unet

    # --- conditioning: text tokens + one camera row ---------------------------------------
    def embed(self, text: str) -> Tensor:
        """(L + 1, D): the text tokens and a camera row (zero: no camera; ``condition_on_views``)."""
        tokens = super().embed(text)
        return torch.cat([tokens, torch.zeros_like(tokens[:1])])

    def condition_on_views(self, emb: Tensor, views, null: bool = False) -> Tensor:
        """Each view's normalized camera (MVDream's) in the camera row, for the null prompt too."""
        if views.c2w is None:
            return emb
        return self.with_camera(emb, normalize_camera(views.c2w.to(emb.device, emb.dtype)))

    @staticmethod
    def with_camera(emb: Tensor, camera: Tensor, rows: Tensor | None = None) -> Tensor:
        """emb (B, L + 1, D) with ``camera`` (B, 16) in its camera row (where ``rows`` (B,) is 1)."""
        row = torch.zeros_like(emb[:, -1])
        row[:, :CAM_DIM] = camera.to(emb.dtype)
        if rows is not None:
            keep = rows.to(emb.device, emb.dtype)[:, None]
            row = keep * row + (1 - keep) * emb[:, -1]
        return torch.cat([emb[:, :-1], row[:, None]], 1)

    def with_psi_camera(self, emb: Tensor, cam: Tensor, psi_rows: Tensor | None = None) -> Tensor:
        """psi's rows see their own camera through the native camera MLP (module docstring)."""
        return self.with_camera(emb, normalize_camera(cam.to(emb.device, emb.dtype)), psi_rows)

    def unet_forward(self, x_t: Tensor, t: Tensor, emb: Tensor, **kwargs) -> Tensor:
        """The multi-view UNet: rows in consecutive sets of ``views_per_set``; emb (B, L + 1, D)."""
        camera = emb[:, -1, :CAM_DIM]
        kwargs.setdefault("cross_attention_kwargs", {"num_views": self.views_per_set})
        return super().unet_forward(x_t, t, emb[:, :-1], class_labels=camera.to(self.unet.dtype), **kwargs)


__all__ = ["MVDream", "MultiViewAttnProcessor", "convert_unet_checkpoint", "normalize_camera", "unet_config"]
