"""Sample quality of a learned prior of a ShapesWorld (scripts/train_prior.py), measured against
the world it was trained on (``world.yaml`` beside the weights):

    python scripts/prior_quality.py models/shapes_ldm --out benchmarks/shapes_ldm_quality

DDIM samples of the model (the backbone's own sampler, ``Backbone.prior_samples``: x_T from the
seed, ``--steps`` deterministic DDIM steps, CFG ``--scale``) are classified by ShapesWorld's
exact nearest-class rule for a fixed camera (src/backbones/shapes_metrics.py, 2D runs): the class
of the nearest data image after the metric's blur, counted only within the world's
``precision_threshold``. Reported:

- ``accuracy``: per "a <color> <shape>" prompt, the fraction of samples of that class within the
  threshold (``--n`` samples each), and their mean / min;
- ``cone_colors``: the colors of "a cone"'s samples (``--n-cone``), counted over the samples that
  are a cone within the threshold, and their entropy in bits (the world's own: 2.0 for four equally likely colors);
- ``fid``: FID (src/metrics/inception.py) between every sample above and the world's images,
  with ``--weights`` real (torch-fidelity's InceptionV3 from disk) or random (test features: a
  plumbing number only, named so in the output).

Writes <out>.json and <out>.md, with the command.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections import Counter
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from src import rng  # noqa: E402
from src.backbones.shapes_metrics import BLUR_PX_AT_32, gaussian_blur, rmse  # noqa: E402
from src.fileio import to_json  # noqa: E402
from src.studies.tables import markdown_table  # noqa: E402


def load(path: str, threads: int | None = None):
    """(StableDiffusion backbone in float32, its world)."""
    from src.backbones.sd import StableDiffusion
    from src.configs import model_world

    world_cfg = model_world(path)
    if not world_cfg:
        raise SystemExit(f"{path} has no world.yaml: nothing to measure the samples against")
    bb = StableDiffusion(path=path, dtype="float32", embedding_cache=None, channels_last=False, world=world_cfg)
    return bb, bb.world()


def classify(world, samples: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(class (B,), distance (B,)) of each sample's nearest data image (blurred RMSE)."""
    std = BLUR_PX_AT_32 * samples.shape[-3] / 32.0
    data = gaussian_blur(world.images().float().cpu(), std)  # (N, H, W, 3)
    blurred = gaussian_blur(samples.float().cpu().clamp(0, 1), std)
    d = torch.stack([rmse(data, x[None]) for x in blurred])  # (B, N)
    best_d, best_i = d.min(1)
    return world.class_idx.cpu()[best_i], best_d


def entropy_bits(counts: list[int]) -> float:
    total = sum(counts)
    return -sum(c / total * math.log2(c / total) for c in counts if c) if total else 0.0


@torch.no_grad()
def measure(bb, world, n: int = 32, n_cone: int = 256, scale: float = 7.5, steps: int = 50, seed: int = 0,
            fid_weights: str | None = "random", cone_prompt: str = "a cone") -> dict:
    tau = world.precision_threshold
    out: dict = {"scale": scale, "ddim_steps": steps, "n_per_prompt": n, "n_cone": n_cone, "seed": seed,
                 "threshold": tau}
    acc, all_samples = {}, []
    for k in range(world.n_classes if n > 0 else 0):
        prompt = f"a {world.class_name(k)}"
        g = rng.generator(seed, rng.Stream.EVAL, k)
        x = bb.prior_samples(prompt, n, g, scale=scale, steps=steps, batch=64)
        cls, dist = classify(world, x)
        acc[prompt] = float(((cls == k) & (dist <= tau)).float().mean())
        all_samples.append(x)
    if acc:
        out["accuracy"] = acc
        out["accuracy_mean"] = sum(acc.values()) / len(acc)
        out["accuracy_min"] = min(acc.values())
    if n_cone > 0:
        x = _cone(bb, world, out, n_cone, scale, steps, seed, cone_prompt)
        all_samples.append(x)
    if fid_weights:
        from src.metrics.inception import fid, inception_outputs
        from src.metrics.models import load_inception

        net = load_inception(fid_weights)
        f_model = inception_outputs(net, torch.cat(all_samples))[0]
        f_world = inception_outputs(net, world.images().float().cpu())[0]
        out["fid"] = fid(f_model, f_world)
        out["fid_weights"] = fid_weights
        out["fid_samples"] = [int(f_model.shape[0]), int(f_world.shape[0])]
    return out


def _cone(bb, world, out: dict, n_cone: int, scale: float, steps: int, seed: int, cone_prompt: str):
    """The color distribution of ``cone_prompt``'s samples into ``out``; returns the samples."""
    shape = cone_prompt.split()[-1]
    g = rng.generator(seed, rng.Stream.EVAL, world.n_classes)
    x = bb.prior_samples(cone_prompt, n_cone, g, scale=scale, steps=steps, batch=64)
    cls, dist = classify(world, x)
    is_shape = (dist <= world.precision_threshold) & (cls // len(world.colors) == world.shapes.index(shape))
    colors = Counter(world.colors[int(c) % len(world.colors)] for c in cls[is_shape])
    counts = [colors.get(c, 0) for c in world.colors]
    out["cone_prompt"] = cone_prompt
    out["cone_colors"] = dict(zip(world.colors, counts))
    out["cone_shape_rate"] = float(is_shape.float().mean())
    out["cone_entropy_bits"] = entropy_bits(counts)
    w = world.embed(cone_prompt).double().cpu()  # the world's own color distribution of the prompt
    out["cone_truth_bits"] = entropy_bits([float(w[world.color_idx.cpu() == c].sum()) for c in range(len(world.colors))])
    return x


def markdown(r: dict, command: str, model: str) -> str:
    lines = [f"# Sample quality of `{model}`", "", f"Command: `{command}`", "",
             f"{r['ddim_steps']} DDIM steps, CFG scale {r['scale']}, seed {r['seed']}; a sample counts when "
             f"its nearest data image (blurred RMSE, ShapesWorld's rule) is of the prompt's class and within "
             f"{r['threshold']}. {r.get('device', '')}"]
    if "accuracy" in r:
        lines += [""] + markdown_table(["prompt", "accuracy"], [[p, f"{a:.2f}"] for p, a in r["accuracy"].items()],
                                       right=["accuracy"])
        lines += ["", f"Mean accuracy {r['accuracy_mean']:.3f}, min {r['accuracy_min']:.3f} "
                      f"({r['n_per_prompt']} samples a prompt)."]
    if "cone_colors" in r:
        lines += ["", f"\"{r['cone_prompt']}\" over {r['n_cone']} samples: {r['cone_shape_rate']:.3f} are a "
                      f"cone; their colors {r['cone_colors']}, entropy {r['cone_entropy_bits']:.3f} bits (the world's: "
                      f"{r.get('cone_truth_bits', 2.0):.3f})."]
    if "fid" in r:
        note = "" if r["fid_weights"] == "real" else (" (random test features, not InceptionV3: the weights are "
                                                      "not on this machine; a plumbing number only)")
        lines += ["", f"FID {r['fid']:.3g} between {r['fid_samples'][0]} samples and the world's "
                      f"{r['fid_samples'][1]} images{note}."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--out", type=Path, default=None, help="<out>.json and <out>.md")
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--n-cone", type=int, default=256)
    ap.add_argument("--scale", type=float, default=7.5)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--weights", choices=("real", "random", "none"), default="random")
    args = ap.parse_args(argv)
    bb, world = load(args.model)
    t0 = time.perf_counter()
    r = measure(bb, world, args.n, args.n_cone, args.scale, args.steps, args.seed,
                None if args.weights == "none" else args.weights)
    r["seconds"] = round(time.perf_counter() - t0, 1)
    r["device"] = f"CPU, {torch.get_num_threads()} threads."
    command = "python scripts/prior_quality.py " + " ".join(argv if argv is not None else sys.argv[1:])
    r["command"] = command
    print(json.dumps({k: v for k, v in r.items() if k != "accuracy"}, indent=1))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".json").write_text(to_json(r, indent=2) + "\n")
        args.out.with_suffix(".md").write_text(markdown(r, command, args.model))
    return 0


if __name__ == "__main__":
    sys.exit(main())
