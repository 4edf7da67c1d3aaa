"""CLIP-family rewards: r(x0, y) = scale * logit_scale * cos(E_img(x0), E_txt(y)).

``reward=clip`` (OpenAI CLIP) and ``reward=pickscore`` (PickScore: a CLIP ViT-H/14
fine-tuned on human preferences, yuvalkirstain/PickScore_v1, with the tokenizer and image
statistics of laion/CLIP-ViT-H-14-laion2B-s32B-b79K; Dive3D's official code uses it with
scale 100). Differentiable end to end: x0 (backbone space) -> ``backbone.decode`` (the SD VAE
decoder, as Dive3D back-propagates through it) -> resize + centre crop + normalize in torch
(CLIPImageProcessor's steps, without PIL) -> image tower. Text embeddings are computed once
per prompt. Weights come from disk only (src/weights.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from src import checks
from src.modules import hold
from src.rewards.base import Reward
from src.weights import resolve_weights

# CLIPImageProcessor's defaults (OpenAI CLIP statistics), used when a model ships none.
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
MODEL_FILES = ("config.json",)
TOKENIZER_FILES = ("tokenizer_config.json",)
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def _features(out) -> Tensor:
    """transformers 4 returns the projected embedding, 5 a ModelOutput holding it."""
    return out if isinstance(out, Tensor) else out.pooler_output


class CLIPReward(Reward):
    def __init__(self, path: str, processor_path: str | None = None, scale: float = 1.0,
                 dtype: str = "float32", revision: str | None = None, cache_dir: str | None = None,
                 download: bool = False, backbone=None):
        super().__init__()
        from transformers import AutoTokenizer, CLIPModel

        model_dir, _ = self.resolve(path, MODEL_FILES, revision, cache_dir, download)
        proc_dir, _ = self.resolve(processor_path or path, TOKENIZER_FILES, None, cache_dir, download)
        self.model = CLIPModel.from_pretrained(model_dir, torch_dtype=DTYPES[dtype]).eval().requires_grad_(False)
        self.tokenizer = AutoTokenizer.from_pretrained(proc_dir)
        stats = self._image_statistics(proc_dir)
        self.register_buffer("mean", torch.tensor(stats["image_mean"]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(stats["image_std"]).view(1, 3, 1, 1), persistent=False)
        self.size = int(self.model.config.vision_config.image_size)
        self.scale = float(scale)
        hold(self, "backbone", backbone)  # shared, not a submodule
        self._text: dict[str, Tensor] = {}

    @staticmethod
    def resolve(path, required, revision, cache_dir, download):
        return resolve_weights(str(path), required, what="CLIP reward weights", key="reward",
                               revision=revision, cache_dir=cache_dir, download=download)

    @classmethod
    def check_config(cls, cfg, key) -> None:
        """Pre-build check: are the model and tokenizer on disk? (nothing allocated)"""
        checks.choice(cfg, "dtype", f"{key}.dtype", DTYPES)
        checks.number(cfg, "scale", f"{key}.scale")
        cls.resolve(cfg.path, MODEL_FILES, cfg.get("revision"), cfg.get("cache_dir"), cfg.get("download", False))
        cls.resolve(cfg.get("processor_path") or cfg.path, TOKENIZER_FILES, None, cfg.get("cache_dir"),
                    cfg.get("download", False))

    @staticmethod
    def _image_statistics(proc_dir: Path) -> dict:
        f = Path(proc_dir) / "preprocessor_config.json"
        cfg = json.loads(f.read_text()) if f.exists() else {}
        return {"image_mean": cfg.get("image_mean", OPENAI_CLIP_MEAN),
                "image_std": cfg.get("image_std", OPENAI_CLIP_STD)}

    def preprocess(self, rgb: Tensor) -> Tensor:
        """(B, H, W, 3) in [0, 1] -> (B, 3, S, S) normalized: resize the short side, centre crop."""
        img = rgb.permute(0, 3, 1, 2).float()
        h, w = img.shape[-2:]
        k = self.size / min(h, w)
        img = F.interpolate(img, size=(max(self.size, round(h * k)), max(self.size, round(w * k))),
                            mode="bicubic", align_corners=False, antialias=True)
        top, left = (img.shape[-2] - self.size) // 2, (img.shape[-1] - self.size) // 2
        img = img[..., top : top + self.size, left : left + self.size]
        return (img - self.mean) / self.std

    def text_embedding(self, prompt: str) -> Tensor:
        if prompt not in self._text:
            tok = self.tokenizer([prompt], padding="max_length", truncation=True,
                                 max_length=self.tokenizer.model_max_length, return_tensors="pt")
            with torch.no_grad():
                e = _features(self.model.get_text_features(input_ids=tok.input_ids.to(self.mean.device)))
            self._text[prompt] = F.normalize(e.float(), dim=-1)
        return self._text[prompt]

    def image_embedding(self, rgb: Tensor) -> Tensor:
        dtype = next(self.model.parameters()).dtype
        e = _features(self.model.get_image_features(pixel_values=self.preprocess(rgb).to(dtype)))
        return F.normalize(e.float(), dim=-1)

    def forward(self, x0: Tensor, prompt: str) -> Tensor:
        rgb = x0 if self.backbone is None else self.backbone.decode(x0)
        if rgb.shape[1] == 3 and rgb.shape[-1] != 3:  # channels-first pixels
            rgb = rgb.permute(0, 2, 3, 1)
        cos = (self.image_embedding(rgb) * self.text_embedding(prompt)).sum(-1)
        return self.scale * self.model.logit_scale.exp().float() * cos
