"""The multi-view twin of scripts/train_prior.py (``--multiview``): a small MVDream of a ShapesWorld,
written so that ``backbone=mvdream`` loads it like MVDream's own weights (docs/mvdream.md):

    python scripts/train_prior.py --multiview --init-from models/shapes_ldm --out models/shapes_mvdream --device cuda

What differs from the single-view recipe (the rest is train_prior.py's, step for step):

- **The UNet** is MVDream's form of it: the same ``UNet2DConditionModel`` plus the camera MLP
  (``class_embed_type="projection"``, ``projection_class_embeddings_input_dim=16``: Linear(16, E) -
  SiLU - Linear(E, E) added to the timestep embedding), with ``MultiViewAttnProcessor``
  (src/backbones/mvdream.py) active in training: attn1 attends over the V views of a set.
- **The data** are the world's V-view sets, the data of its exact multi-view prior
  (``view_conditioning=multiview``, src/backbones/shapes.py): each step draws sets of V cameras with
  the sampler of ``camera=multiview`` on the world (azimuths a0 + k 360 / V, one elevation, the
  world's distance and field of view: conf/tuning/camera/shapes_multiview.yaml), a caption per
  set, a class from the caption's class marginal (``ShapesWorld.class_distribution``), and for each
  view the class's image at the world camera nearest it (``ShapesWorld._nearest_camera``: the
  exact prior's x_k(c)). Every azimuth, whatever a Janus world's photo collection lacks (MVDream's
  Objaverse renders are all around).
- **The camera** each view is told is ``camera_labels``: MVDream's ``normalize_camera`` of the
  view's c2w, fed as ``class_labels`` as ``MVDream.unet_forward`` feeds it at inference
  (``tests/test_prior_multiview.py`` checks the two are equal for the same views).
- **Captions** have no view phrase (the camera tells the view); color and shape drop and the
  empty caption (CFG's unconditional branch) as in train_prior.py. The camera stays on for the
  empty caption: MVDream's CFG tells both branches the camera.
- **t**: one t for the whole set with ``P_SHARED_T`` (MVDream-threestudio's SDS draws one t per
  step), else one per view (Distillery's schedules draw one per row, src/schedules.py).
- ``--init-from DIR`` (MVDream's own recipe: SD 2.1 fine-tuned): the VAE, tokenizer, text encoder
  (frozen) and UNet of DIR, a single-view model of the same world (models/shapes_ldm); the camera
  MLP starts with its output at zero, so step 0 is DIR's UNet but for the cross-view attention.
  ``--vae-from DIR``: only the VAE (the UNet and text encoder trained from scratch).

Output: the diffusers repository of train_prior.py, whose ``unet/`` is the multi-view UNet (a
diffusers UNet folder, which ``backbone.checkpoint`` accepts: ``conf/backbone/shapes_mvdream.yaml``),
``world.yaml`` (the world with ``view_conditioning: multiview``: the exact twin), ``README.md``
(the model card, filled from ``train_log.json``).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from scripts import train_prior as tp
from src.backbones.mvdream import MVDREAM_VIEWS, multiview_unet, normalize_camera
from src.cameras import CAM_DIM
from src.studies.tables import markdown_table

# --init-from's UNet learning rate (unless --unet-lr): a fine-tune from a trained model at the
# from-scratch rate (Size.unet_lr) ended 400 steps worse than it began on held-out sets, one at
# this rate better (benchmarks/shapes_mvdream_lr.md, rows "trained")
FINETUNE_LR = 1e-4
# MVDream-threestudio's guidance draws one t per step for the whole set; the project's schedules
# draw one per row: half the sets train each case
P_SHARED_T = 0.5


def camera_labels(views) -> torch.Tensor:
    """(B, 16): the camera each view is told, exactly as ``MVDream.condition_on_views`` +
    ``unet_forward`` feed it (MVDream's normalization of the float32 c2w)."""
    return normalize_camera(views.c2w.float())


def set_sampler(camera_cfg, sets: int, views: int):
    """The ``camera=multiview`` sampler of the world (``camera_cfg``), drawing ``sets`` sets of
    ``views`` views a step."""
    from hydra.utils import instantiate

    return instantiate(camera_cfg, batch_size=sets * views, views_per_set=views)


class MultiViewPriorTrainer(tp.PriorTrainer):
    """``PriorTrainer`` on the world's V-view sets, the UNet told each view's camera."""

    camera_dim = CAM_DIM

    def __init__(self, world, world_cfg, camera_cfg, out: Path, work: Path, size: tp.Size, seed: int = 0,
                 checkpoint_every: int = 500, device: str = "cpu", views: int = MVDREAM_VIEWS,
                 vae_from: Path | None = None, init_from: Path | None = None, overrides: tuple[str, ...] = ()):
        self.views, self.overrides = int(views), list(overrides)
        if size.unet_batch % self.views:
            raise SystemExit(f"--unet-batch {size.unet_batch} must be a multiple of --views {self.views} "
                             "(the batch is sets of views)")
        self.init_from = None if init_from is None else Path(init_from)
        world_cfg = OmegaConf.merge(world_cfg, {"view_conditioning": "multiview", "views_per_set": self.views})
        super().__init__(world, world_cfg, out, work, size, seed, checkpoint_every, device,
                         vae_from=self.init_from or vae_from)
        self.sampler = set_sampler(camera_cfg, size.unet_batch // self.views, self.views)
        if self.init_from is not None:
            self._init_from(self.init_from)
        multiview_unet(self.unet)  # cross-view self-attention in training, as at inference

    def set_captions(self) -> None:
        """Captions without a view phrase; ``class_p`` (K, classes): each caption's class marginal
        pi_k, and its images ``image_w`` (K, N) every view of those classes alike (the VAE's data
        when it trains here: the view sets show every view)."""
        self.texts = tp.captions(self.world, views=())
        self.caption_p = tp.caption_probs(self.world, views=())
        self.class_p = torch.stack([self.world.class_distribution(t) for t in self.texts])
        self.image_w = self.class_p[:, self.world.class_idx] / self.world.n_views

    def _init_from(self, model: Path) -> None:
        """MVDream's recipe: ``model``'s text encoder (frozen) and UNet, the camera MLP's output at
        zero (step 0 adds nothing to the timestep embedding)."""
        from diffusers import UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        if CLIPTokenizer.from_pretrained(model, subfolder="tokenizer").get_vocab() != self.tokenizer.get_vocab():
            raise SystemExit(f"{model}/tokenizer is not this world's tokenizer (train_prior.write_tokenizer)")
        self.text = CLIPTextModel.from_pretrained(model, subfolder="text_encoder", torch_dtype=torch.float32)
        self.text.to(self.device).requires_grad_(False)
        source = UNet2DConditionModel.from_pretrained(model, subfolder="unet", torch_dtype=torch.float32)
        if source.config.class_embed_type is not None:
            raise SystemExit(f"--init-from {model}: a single-view model (train_prior.py without --multiview) is "
                             f"fine-tuned; this UNet has class_embed_type={source.config.class_embed_type!r}")
        cfg = {k: v for k, v in dict(source.config).items() if not k.startswith("_")}
        cfg.update(class_embed_type="projection", projection_class_embeddings_input_dim=CAM_DIM)
        with torch.random.fork_rng(devices=[]):
            tp.rng.seed_global(self.seed, tp.rng.Stream.INIT)
            unet = UNet2DConditionModel.from_config(cfg)
        result = unet.load_state_dict(source.state_dict(), strict=False)  # all but the new camera MLP
        if result.unexpected_keys or any(not k.startswith("class_embedding.") for k in result.missing_keys):
            raise SystemExit(f"--init-from {model}: its UNet does not load into the multi-view UNet ({result})")
        torch.nn.init.zeros_(unet.class_embedding.linear_2.weight)
        torch.nn.init.zeros_(unet.class_embedding.linear_2.bias)
        self.unet = unet.to(self.device)

    def trainable(self) -> list[torch.nn.Parameter]:
        """The UNet; the text encoder too unless it came from ``--init-from`` (frozen, as MVDream's)."""
        return [*self.unet.parameters(), *([] if self.init_from else self.text.parameters())]

    def unet_inputs(self, step: int, mean: torch.Tensor, std: torch.Tensor) -> dict:
        """Step ``step``'s batch (PRIOR stream): sets of V views, rows consecutive per set.
        -> dict of z_t (B, 4, h, w), t (B,), eps, caption ids (B, L), class_labels (B, 16), views,
        image (B,) indices into the world's images."""
        S, V = self.size.unet_batch // self.views, self.views
        g = tp.rng.generator(self.seed, tp.rng.Stream.PRIOR, 1 * 10**7 + step)
        views = self.sampler.sample(step, g)
        k = torch.multinomial(self.caption_p, S, replacement=True, generator=g)
        cls = torch.multinomial(self.class_p[k], 1, generator=g)[:, 0]
        N = len(self.world.class_idx)
        nearest = self.world._nearest_camera(views, torch.ones(len(views), N, dtype=torch.bool))
        view_id = nearest[:, : self.world.n_views].float().argmax(1)  # class 0's images: the world cameras
        i = cls.repeat_interleave(V) * self.world.n_views + view_id
        at = i.to(self.device)
        z0 = mean[at] + std[at] * self.randn(mean[at].shape, g)
        t_set, t_view = torch.randint(0, tp.T, (S,), generator=g), torch.randint(0, tp.T, (S * V,), generator=g)
        shared = (torch.rand(S, generator=g) < P_SHARED_T).repeat_interleave(V)
        t = torch.where(shared, t_set.repeat_interleave(V), t_view).to(self.device)
        eps = self.randn(z0.shape, g)
        a = self.abar[t].view(-1, 1, 1, 1)
        return {"z_t": a.sqrt() * z0 + (1 - a).sqrt() * eps, "t": t, "eps": eps,
                "ids": self.ids[k.to(self.device)].repeat_interleave(V, 0),
                "class_labels": camera_labels(views).to(self.device), "views": views, "image": i}

    def unet_loss(self, step: int, mean: torch.Tensor, std: torch.Tensor) -> tuple[torch.Tensor, int]:
        b = self.unet_inputs(step, mean, std)
        emb = self.text(b["ids"])[0]
        pred = self.unet(b["z_t"], b["t"], encoder_hidden_states=emb, class_labels=b["class_labels"],
                         cross_attention_kwargs={"num_views": self.views}).sample
        return F.mse_loss(pred, b["eps"]), int(b["t"][0])

    def log_extra(self) -> dict:
        extra = {"views_per_set": self.views, "p_shared_t": P_SHARED_T, "captions_without_view": True,
                 "overrides": self.overrides, "out": str(self.out)}
        if self.init_from is not None:
            extra["init_from"] = str(self.init_from)
        elif self.vae_from is not None:
            extra["vae_from"] = str(self.vae_from)
        return extra

    def write(self) -> Path:
        out = super().write()
        log = json.loads((out / "train_log.json").read_text())
        (out / "README.md").write_text(model_card(out.name, log, self.world))
        return out


def train_command(log: dict) -> str:
    """The command that trains the model of ``log`` (its train_log.json) again."""
    size = log["size"]
    flags = f" --init-from {log['init_from']}" if log.get("init_from") else (
        f" --vae-from {log['vae_from']}" if log.get("vae_from") else "")
    device = "cpu" if log["device"].startswith("cpu") else "cuda"
    words = "".join(f" {w}" for w in log.get("overrides", []))
    return (f"python scripts/train_prior.py --multiview --views {log['views_per_set']}{flags} --unet-steps "
            f"{size['unet_steps']} --unet-batch {size['unet_batch']} --unet-lr {size['unet_lr']:g} --seed "
            f"{log['seed']} --out {log.get('out', 'OUT')} --device {device}{words}")


def _m(n: int) -> str:
    return f"{n / 1e6:.2f} M"


def model_card(name: str, log: dict, world) -> str:
    """The model card of a multi-view model, every number from its ``train_log.json``."""
    size, params, loss = log["size"], log["parameters"], log["final_loss"]
    V = log["views_per_set"]
    src = log.get("init_from") or log.get("vae_from")
    origin = (f"fine-tuned from `{log['init_from']}` (its VAE, tokenizer and text encoder, frozen, and its "
              "UNet; the camera MLP added with its output at zero), MVDream's recipe" if log.get("init_from") else
              f"the VAE of `{log['vae_from']}`; UNet and text encoder trained from scratch" if log.get("vae_from")
              else "VAE, UNet and text encoder trained from scratch")
    sets = size["unet_batch"] // V
    vae_loss = "" if loss.get("vae") is None else f"; VAE reconstruction MSE {loss['vae']:.4g}"
    n_sets = world.n_classes * world.n_elevations * world.n_azimuths
    sets_s = f"{sets} set{'s' if sets > 1 else ''}"
    rows = [
        ("data", f"the world's {V}-view sets ({n_sets} ordered sets = {world.n_classes} classes x "
                 f"{world.n_elevations} elevations x {world.n_azimuths} first azimuths a0, views at a0 + k 360 / {V}), cameras drawn as "
                 "`camera=multiview` draws them, each view the class's image at the nearest world camera; "
                 f"{log['captions']} captions (no view phrase)"),
        ("origin", origin),
        ("UNet", f"{_m(params['unet'])} parameters, {size['unet_steps']} steps at batch {size['unet_batch']} views "
                 f"({sets_s}), lr {size['unet_lr']:g}, EMA {log['rates']['ema_decay']}; one t per set with "
                 f"probability {log['p_shared_t']}, else one per view"),
        ("VAE, text encoder", f"{_m(params['vae'])}, {_m(params['text_encoder'])} parameters"),
        ("schedule", "SD's scaled-linear DDPM, 1000 steps, epsilon prediction"),
        ("final losses", f"UNet epsilon MSE {loss['unet']:.4g}{vae_loss} (mean of the last 5 % of steps, "
                         "`train_log.json`, `loss.png`)"),
        ("trained", f"seed {log['seed']}, {log['train_seconds']:.0f} s on {log['device']}"),
    ]
    table = "\n".join(markdown_table(["", ""], rows))
    return f"""# {name}: a multi-view latent diffusion model of a ShapesWorld, in MVDream's layout

MVDream's form of the project's learned prior (docs/mvdream.md, docs/learned_prior.md): a
`UNet2DConditionModel` with MVDream's camera MLP (`class_embed_type="projection"`, 16 camera
numbers) that denoises the {V} views of a set jointly (self-attention over the views,
`MultiViewAttnProcessor`), trained on the world's {V}-view sets (`world.yaml`; its exact twin is
`view_conditioning: multiview`). `backbone=mvdream` loads it as MVDream's own weights:

```bash
python -m src.train backbone=shapes_mvdream backbone.path=models/{name} camera=multiview prompt="a red cone"
python -m src.train backbone=mvdream backbone.path=models/{name} backbone.checkpoint=models/{name}/unet camera=multiview
```

{table}

## How it was made

```bash
{train_command(log)}
```

{'The VAE comes from `' + src + '`. ' if src else ''}The sampler of plain `StableDiffusionPipeline` does not pass
the camera (`class_labels`) and has no cross-view attention: sample through `backbone=mvdream`.
Not measured yet: sample quality and distillation on it (the single-view model's are in
`benchmarks/shapes_ldm_quality.md`, `benchmarks/shapes_ldm_sds.md`).
"""
