"""Does a learned multi-view prior (scripts/train_prior.py --multiview) use its cameras and its
other views? Held-out epsilon MSE of each model on the same batches of its world's view sets:

    python scripts/prior_multiview_check.py models/shapes_mvdream --out benchmarks/shapes_mvdream_check

Batches are the trainer's own (``MultiViewPriorTrainer.unet_inputs``: sets of V views from
``camera=multiview``'s sampler, each view the class's image at the nearest world camera, one t a set
or a view), drawn at steps ``HELD_OUT_STEP`` + j, which no training run of fewer steps draws.
Columns, the same UNet fed:

- ``true``: each view's own camera (what training and ``backbone=mvdream`` feed);
- ``az+180``: each view the camera of the view opposite it in its set (a wrong azimuth);
- ``zero camera``: the camera MLP fed zeros (the camera-free input of psi's dropout);
- ``one view a set``: true cameras, the views attending only to their own tokens (no cross-view
  attention).

A model that uses its camera has ``true`` below ``az+180`` and ``zero camera``; one that uses its
other views, ``true`` below ``one view a set``. A fine-tuned model (``init_from`` in its
train_log.json) gets a row ``step 0`` too: the model it started from, its camera MLP at zero.
Writes <out>.json and <out>.md with the command.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from scripts import train_prior as tp  # noqa: E402
from scripts.train_prior_multiview import MultiViewPriorTrainer, train_command  # noqa: E402
from src.backbones.mvdream import multiview_unet  # noqa: E402
from src.studies.tables import markdown_table, write_study  # noqa: E402

HELD_OUT_STEP = 10**6  # batches of steps no training run reaches (the shipped recipes run <= 10^4)
COLUMNS = ("true", "az+180", "zero camera", "one view a set")


def trainer_for(model: Path, work: Path, batch: int, init: bool) -> MultiViewPriorTrainer:
    """The trainer of ``model``'s world and views (its train_log.json), holding the model's UNet and
    text encoder (``init``: the model it was fine-tuned from, at step 0)."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    log = json.loads((model / "train_log.json").read_text())
    world, world_cfg, camera_cfg = tp.world_from(log.get("overrides", []), camera="multiview")
    size = tp.Size(**{**tp.asdict(tp.SIZES["small"]), "unet_batch": batch})
    source = Path(log["init_from"]) if init else None
    tr = MultiViewPriorTrainer(world, world_cfg, camera_cfg, work / "out", work / "state", size,
                               views=log["views_per_set"], vae_from=None if init else model, init_from=source)
    if not init:
        tr.unet = UNet2DConditionModel.from_pretrained(model, subfolder="unet", torch_dtype=torch.float32)
        multiview_unet(tr.unet)
        tr.text = CLIPTextModel.from_pretrained(model, subfolder="text_encoder", torch_dtype=torch.float32)
    tr.vae.load_state_dict(tr.state["vae"])
    tr.vae.register_to_config(scaling_factor=tr.state["scaling_factor"])
    return tr


@torch.no_grad()
def check(tr: MultiViewPriorTrainer, batches: int) -> dict[str, float]:
    """Mean epsilon MSE per column over ``batches`` held-out batches."""
    tr.unet.eval()
    tr.text.eval()
    tr.vae.eval()
    post = tr.vae.encode(tr.images).latent_dist
    f = tr.vae.config.scaling_factor
    mean, std = post.mean * f, post.std * f
    V, total = tr.views, dict.fromkeys(COLUMNS, 0.0)
    for j in range(batches):
        b = tr.unet_inputs(HELD_OUT_STEP + j, mean, std)
        emb = tr.text(b["ids"])[0]
        cam = b["class_labels"]
        opposite = cam.view(-1, V, cam.shape[-1]).roll(V // 2, 1).reshape(cam.shape)
        for col, c, n in (("true", cam, V), ("az+180", opposite, V), ("zero camera", torch.zeros_like(cam), V),
                          ("one view a set", cam, 1)):
            pred = tr.unet(b["z_t"], b["t"], encoder_hidden_states=emb, class_labels=c,
                           cross_attention_kwargs={"num_views": n}).sample
            total[col] += float(((pred - b["eps"]) ** 2).mean()) / batches
    return total


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="+", type=Path, help="model directories written by train_prior.py --multiview")
    ap.add_argument("--out", type=Path, required=True, help="<out>.json and <out>.md")
    ap.add_argument("--batches", type=int, default=24)
    ap.add_argument("--batch", type=int, default=16, help="views a batch (sets of the model's V)")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models:
            log = json.loads((model / "train_log.json").read_text())
            for variant, init in (("step 0", True), ("trained", False)):
                if init and not log.get("init_from"):
                    continue
                tr = trainer_for(model, Path(tmp) / f"{model.name}-{variant}", args.batch, init)
                rows.append({"model": str(model), "variant": variant, **check(tr, args.batches),
                             "unet_steps": 0 if init else log["size"]["unet_steps"],
                             "unet_lr": None if init else log["size"]["unet_lr"]})
    command = "python scripts/prior_multiview_check.py " + " ".join(sys.argv[1:] if argv is None else argv)
    table = markdown_table(["model", "variant", "UNet steps", "lr", *COLUMNS],
                           [[r["model"], r["variant"], str(r["unet_steps"]), r["unet_lr"],
                             *(r[c] for c in COLUMNS)] for r in rows], right=COLUMNS)
    made = "\n".join(dict.fromkeys(train_command(json.loads((m / "train_log.json").read_text())) for m in args.models))
    md = ("# Held-out epsilon MSE of learned multi-view priors\n\n"
          "`scripts/prior_multiview_check.py` (its docstring says what each column feeds). "
          f"{args.batches} batches of {args.batch} views.\n\n```bash\n{command}\n```\n\n" + "\n".join(table)
          + f"\n\nThe models were made by\n\n```bash\n{made}\n```\n")
    write_study(args.out, {"command": command, "made_by": made.split("\n"), "batches": args.batches, "batch": args.batch, "rows": rows}, md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
