"""The networks the metrics need: from disk only (src/weights.py's rule), or random test weights.

Real weights, checked by ``check_weights`` before anything is computed (a missing file fails
with its path and the command that fetches it):
- LPIPS (``lpips`` package, v0.1): its linear heads ship inside the package; the trunk is
  torchvision's ImageNet AlexNet (or VGG16), read from torch's hub cache, where torchvision
  itself would have put it (``LPIPS_TRUNKS``).
- CLIP: a transformers CLIP directory or Hugging Face id, loaded as the rewards load it
  (src/rewards/clip.py); default ``CLIP_DEFAULT``, the ViT-H/14 of dive3d_sim's CLIP-D code.
- Inception: torch-fidelity's InceptionV3 (the TF FID network ported to torch), read from
  torch's hub cache; one file gives FID / KID features (pool 2048) and the 1008-way
  classifier of the Inception Score, which IQ / IV / IG use (esd Sec. 6 borrows them from IS).

``weights="random"`` builds every network in-process with random weights from the METRICS
stream (src/rng.py): an LPIPS with a random trunk (``pnet_rand``), a tiny CLIP and a small
random convolutional feature extractor. Their numbers test the plumbing (identical renders
still give 0) and mean nothing else; reports say which weights were used.
"""

from __future__ import annotations

import contextlib
import json
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from src import cache, rng
from src.cache import verified_dir
from src.weights import WeightsNotFound, resolve_weight_file, resolve_weights, torch_hub_file

WEIGHTS = ("real", "random")
# torchvision's ImageNet checkpoints (torchvision.models.AlexNet_Weights / VGG16_Weights).
LPIPS_TRUNKS = {
    "alex": ("alexnet-owt-7be5be79.pth", "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"),
    "vgg": ("vgg16-397923af.pth", "https://download.pytorch.org/models/vgg16-397923af.pth"),
}
LPIPS_DEFAULT_NET = "alex"  # the lpips package's default (and the papers')
CLIP_DEFAULT = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
# torch_fidelity.feature_extractor_inceptionv3.URL_INCEPTION_V3 (its file name is the cache name)
INCEPTION_URL = ("https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
                 "weights-inception-2015-12-05-6726825d.pth")
INCEPTION_FEATURES = "2048"  # the pool features of FID / KID
INCEPTION_LOGITS = "logits_unbiased"  # the Inception Score's classifier (1008 classes)


@contextlib.contextmanager
def _seeded(index: int):
    """Libraries that initialise from torch's global RNG draw from the METRICS stream here,
    and the caller's global RNG state is restored afterwards."""
    with torch.random.fork_rng(devices=[]):
        rng.seed_global(0, rng.Stream.METRICS, index)
        yield


# --- which files ---------------------------------------------------------------------------
def lpips_trunk_file(net: str = LPIPS_DEFAULT_NET, path: str | None = None) -> Path:
    name, url = LPIPS_TRUNKS[net]
    return resolve_weight_file(path or torch_hub_file(name), url=url, key="--lpips-trunk",
                               what=f"LPIPS's trunk weights (torchvision ImageNet {net})")


def inception_file(path: str | None = None) -> Path:
    name = INCEPTION_URL.rsplit("/", 1)[1]
    return resolve_weight_file(path or torch_hub_file(name), url=INCEPTION_URL, key="--inception",
                               what="Inception weights for FID / KID / IQ (torch-fidelity's InceptionV3)")


def clip_dir(path: str = CLIP_DEFAULT) -> Path:
    return resolve_weights(str(path), ("config.json", "tokenizer_config.json"), key="--clip",
                           what="CLIP weights for CLIP-D / CLIP distance")[0]


def check_weights(needs: set[str], weights: str = "real", lpips_net: str = LPIPS_DEFAULT_NET,
                  lpips_trunk: str | None = None, clip: str = CLIP_DEFAULT,
                  inception: str | None = None) -> None:
    """Raise WeightsNotFound listing every missing file of ``needs`` (lpips / clip / inception),
    touching only the file system: called before any metric is computed."""
    if weights not in WEIGHTS:
        raise ValueError(f"weights={weights!r}; valid: {', '.join(WEIGHTS)}")
    if weights == "random":
        return
    errors = []
    for need, check in (("lpips", lambda: lpips_trunk_file(lpips_net, lpips_trunk)),
                        ("clip", lambda: clip_dir(clip)), ("inception", lambda: inception_file(inception))):
        if need in needs:
            try:
                check()
            except WeightsNotFound as err:
                errors.append(str(err))
    if errors:
        raise WeightsNotFound("\n\n".join(errors) + "\n\n(or --weights random: test weights, "
                              "numbers that only test the plumbing)")


# --- LPIPS ---------------------------------------------------------------------------------
def load_lpips(weights: str = "real", net: str = LPIPS_DEFAULT_NET, trunk: str | None = None) -> nn.Module:
    """lpips.LPIPS (v0.1 linear heads from the package) with the trunk from disk or random."""
    import lpips

    file = lpips_trunk_file(net, trunk) if weights == "real" else None
    with _seeded(1), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # lpips calls torchvision's old `pretrained=`
        model = lpips.LPIPS(net=net, pnet_rand=True, verbose=False)
    if file is not None:
        # lpips keeps torchvision's `features` modules under their own indices, in slices:
        # net.slice<k>.<i>.weight is features.<i>.weight of the torchvision checkpoint
        state = torch.load(file, map_location="cpu", weights_only=True)
        model.net.load_state_dict({k: state["features." + k.split(".", 1)[1]]
                                   for k in model.net.state_dict()})
    return model.eval().requires_grad_(False)


# --- CLIP ----------------------------------------------------------------------------------
def load_clip(weights: str = "real", path: str = CLIP_DEFAULT, cache: Path | None = None):
    """A CLIP with ``image_embedding(rgb)`` / ``text_embedding(prompt)`` (unit vectors), loaded
    as the CLIP rewards load it (src/rewards/clip.py)."""
    from src.rewards.clip import CLIPReward

    if weights == "random":
        path = str(write_tiny_clip(Path(cache or _default_cache()) / "tiny_clip"))
    else:
        path = str(clip_dir(path))
    return CLIPReward(path=path, dtype="float32").eval()


TINY_CLIP_MAX_TOKENS = 32
TINY_CLIP_CHARS = "abcdefghijklmnopqrstuvwxyz,.0123456789"


def char_bpe_files(d: Path) -> tuple[Path, Path]:
    """vocab.json and merges.txt of a character-level CLIP BPE (no merges) in ``d``: every
    prompt of TINY_CLIP_CHARS tokenizes offline (the tiny CLIPs of the metrics, tests and
    scripts/bench_sd_gpu.py)."""
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for suffix in ("", "</w>"):
        for c in TINY_CLIP_CHARS:
            vocab[c + suffix] = len(vocab)
    d.mkdir(parents=True, exist_ok=True)
    (d / "vocab.json").write_text(json.dumps(vocab))
    (d / "merges.txt").write_text("#version: 0.2\n")
    return d / "vocab.json", d / "merges.txt"


TINY_CLIP_SPEC = {"towers": 16, "intermediate": 32, "heads": 2, "layers": 1, "image_size": 32,
                  "patch_size": 8, "projection": 8, "seed": 2, "chars": TINY_CLIP_CHARS,
                  "max_tokens": TINY_CLIP_MAX_TOKENS}


def write_tiny_clip(root: Path) -> Path:
    """A tiny random CLIP (16-wide towers, 32 px images) with a character-level tokenizer,
    saved as a transformers directory; built once and reused while its files match their
    manifest (src/cache.py: verified_dir). Returns where it is (``root``, or a temp directory
    when ``root`` cannot be written)."""
    return verified_dir(Path(root), TINY_CLIP_SPEC, _build_tiny_clip)


def _build_tiny_clip(root: Path) -> None:
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    spec = TINY_CLIP_SPEC
    vocab, merges = char_bpe_files(root / "_bpe")
    tok = CLIPTokenizer(str(vocab), str(merges), model_max_length=spec["max_tokens"])
    width, inner, heads, layers = spec["towers"], spec["intermediate"], spec["heads"], spec["layers"]
    cfg = CLIPConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=width, intermediate_size=inner,
                         num_attention_heads=heads, num_hidden_layers=layers,
                         max_position_embeddings=spec["max_tokens"], bos_token_id=0, eos_token_id=1,
                         pad_token_id=1),
        vision_config=dict(hidden_size=width, intermediate_size=inner, num_attention_heads=heads,
                           num_hidden_layers=layers, image_size=spec["image_size"],
                           patch_size=spec["patch_size"]),
        projection_dim=spec["projection"])
    with _seeded(spec["seed"]):
        model = CLIPModel(cfg)
    tok.save_pretrained(root)
    model.save_pretrained(root)


def _default_cache() -> Path:
    return cache.root() / "metrics"


# --- Inception (FID / KID / IQ / IV / IG) -----------------------------------------------------
class RandomFeatures(nn.Module):
    """A small random CNN with the Inception extractor's interface: uint8 images (N, 3, H, W)
    -> (features (N, 64), logits (N, 10)). Test weights only."""

    def __init__(self, n_features: int = 64, n_classes: int = 10):
        super().__init__()
        with _seeded(3):
            self.conv = nn.Sequential(nn.Conv2d(3, 16, 5, 2, 2), nn.ReLU(), nn.Conv2d(16, 32, 5, 2, 2), nn.ReLU(),
                                      nn.Conv2d(32, n_features, 3, 2, 1), nn.ReLU())
            self.fc = nn.Linear(n_features, n_classes)
        self.requires_grad_(False).eval()

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = F.interpolate(x.float() / 127.5 - 1.0, size=(64, 64), mode="bilinear", align_corners=False)
        f = self.conv(x).mean((2, 3))
        return f, self.fc(f)


def load_inception(weights: str = "real", path: str | None = None) -> nn.Module:
    """uint8 (N, 3, H, W) -> (pool features (N, D), classifier logits (N, C))."""
    if weights == "random":
        return RandomFeatures()
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    file = inception_file(path)
    return FeatureExtractorInceptionV3("inception-v3-compat", [INCEPTION_FEATURES, INCEPTION_LOGITS],
                                       feature_extractor_weights_path=str(file))
