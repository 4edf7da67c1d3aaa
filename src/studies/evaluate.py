"""The metrics of a finished sweep (``make evaluate``): per run and per group of seeds.

``evaluate_sweep(sweep_dir, metrics, weights)`` reads each finished run's renders
(src/metrics/frames.py) and exported shape, computes the asked metrics and writes them to
``<sweep_dir>/evaluation.json``, which src/studies/report.py joins into the report. Runs that failed,
diverged or never finished are listed under ``skipped`` and left out of every group; a group
metric over fewer than two runs is null. Weights are checked for every asked metric before
anything is computed (src/metrics/models.py: a missing file fails naming it and its fetch
command).

Metrics (``METRICS``; the exact ShapesWorld ones, precision / mode_id / janus_rate, are the
runs' own, and distinct modes / mode entropy come from mode_id in the report):
- per run: ``clip_distance`` (CLIP), ``iq`` / ``iv`` / ``ig`` (Inception classifier);
- per group: ``lpips_d``, ``clip_d``, ``chamfer_d`` (no weights), ``fid`` / ``kid`` (Inception
  features of every render of the group against ``n`` prior samples of the group's prompt:
  ShapesWorld's own images of the prompt at the renders' resolution, all of them (64 for a
  one-class prompt such as "a red cone") unless ``prior_samples`` is given; other priors
  ``DEFAULT_PRIOR_SAMPLES`` DDIM samples (Backbone.prior_samples)). Prior samples are cached
  in ``<sweep_dir>/prior_samples/``.

Device (``device``: auto, cpu, cuda, cuda:N; auto = the first GPU if there is one): the
networks (LPIPS, CLIP, Inception), the renders they read and the prior that draws FID's samples
(Stable Diffusion's DDIM) run there; ShapesWorld's prior samples are renders of its world (the
CPU renderer, a few images), Chamfer-D's nearest neighbours and FID / KID's statistics of the
features run on the CPU. evaluation.json records the device (and the GPU's name).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from src import rng
from src.fileio import atomic_write
from src.metrics import models
from src.metrics.chamfer import chamfer_d, shape_points
from src.metrics.clip import clip_d, clip_distance, clip_embeddings
from src.metrics.frames import run_frames, same_cameras
from src.metrics.inception import fid, inception_gain, inception_outputs, kid
from src.metrics.perceptual import lpips_d
from src.studies.report import EVALUATION
from src.studies.runs import find_runs, group_keys, group_runs, relative, run_config

# metric -> (level, the network it needs or None)
METRICS = {
    "clip_distance": ("run", "clip"),
    "iq": ("run", "inception"), "iv": ("run", "inception"), "ig": ("run", "inception"),
    "lpips_d": ("group", "lpips"),
    "clip_d": ("group", "clip"),
    "chamfer_d": ("group", None),
    "fid": ("group", "inception"), "kid": ("group", "inception"),
}
# Computed by the report from the runs' own metrics: accepted here so that one list names all.
REPORT_METRICS = ("distinct_modes", "mode_entropy")
DEFAULT_PRIOR_SAMPLES = 64  # DDIM samples per prompt for priors without a data set (SD)
PRIOR_DIR = "prior_samples"


def parse_metrics(text: str | list[str] | None) -> list[str]:
    """'all', None or a comma list -> metric names in METRICS order (unknown names raise)."""
    if text is None or text == "all" or text == ["all"]:
        return list(METRICS)
    names = [m.strip() for m in (text.split(",") if isinstance(text, str) else text) if m.strip()]
    unknown = [m for m in names if m not in METRICS and m not in REPORT_METRICS]
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; valid: all, {', '.join([*METRICS, *REPORT_METRICS])}")
    return [m for m in METRICS if m in names]


class Evaluator:
    """Holds the networks (loaded on first use) and per-run caches of one evaluation."""

    def __init__(self, sweep_dir: Path, weights: str, lpips_net: str, lpips_trunk: str | None,
                 clip: str, inception: str | None, prior_samples: int | None,
                 device: torch.device = torch.device("cpu")):
        self.sweep_dir, self.weights, self.device = Path(sweep_dir), weights, torch.device(device)
        self.opts = dict(lpips_net=lpips_net, lpips_trunk=lpips_trunk, clip=clip, inception=inception)
        self.n_prior = prior_samples
        self._nets: dict = {}
        self.frames: dict[Path, object] = {}
        self.prior_how: set[str] = set()

    def net(self, name: str):
        if name not in self._nets:
            o = self.opts
            self._nets[name] = {
                "lpips": lambda: models.load_lpips(self.weights, o["lpips_net"], o["lpips_trunk"]),
                "clip": lambda: models.load_clip(self.weights, o["clip"], self.sweep_dir / ".cache"),
                "inception": lambda: models.load_inception(self.weights, o["inception"]),
            }[name]().to(self.device)
        return self._nets[name]

    def renders(self, run) -> torch.Tensor | None:
        """The run's renders (V, H, W, 3) in [0, 1] on the evaluation's device."""
        if run.dir not in self.frames:
            self.frames[run.dir] = run_frames(run.dir)
        f = self.frames[run.dir]
        return None if f is None else f.as_float().to(self.device)

    def clip_embeddings(self, run):
        key = ("clip", run.dir)
        if key not in self.frames:
            r = self.renders(run)
            self.frames[key] = None if r is None else clip_embeddings(self.net("clip"), r)
        return self.frames[key]

    def inception(self, run):
        key = ("inception", run.dir)
        if key not in self.frames:
            f = self.renders(run) is not None and self.frames[run.dir]
            self.frames[key] = inception_outputs(self.net("inception"), f.rgb, device=self.device) if f else None
        return self.frames[key]

    def prior(self, run) -> torch.Tensor:
        """Prior samples of the run's prompt (cached in <sweep_dir>/prior_samples/)."""
        from hydra.utils import instantiate

        cfg = run_config(run.dir)
        prompt = str(cfg.prompt or "")
        res = int(self.frames[run.dir].rgb.shape[1])
        spec = {"backbone": OmegaConf.to_container(cfg.backbone, resolve=True), "prompt": prompt,
                "n": self.n_prior, "resolution": res}
        key = hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]
        path = self.sweep_dir / PRIOR_DIR / f"{key}.npz"
        if path.exists():
            with np.load(path) as z:
                self.prior_how.add(str(z["how"]))
                return torch.from_numpy(z["rgb"].astype(np.float32) / 255.0)
        backbone = instantiate(cfg.backbone).eval().to(self.device)
        n = self.n_prior
        from src.backbones.shapes import ShapesWorld

        if isinstance(backbone, ShapesWorld):
            samples = backbone.prior_samples(prompt, n, rng.generator(0, rng.Stream.METRICS, 5), resolution=res)
            how = f"{len(samples)} ShapesWorld images of {prompt!r}"
        else:
            n = n or DEFAULT_PRIOR_SAMPLES
            samples = backbone.prior_samples(prompt, n, rng.generator(0, rng.Stream.METRICS, 5))
            how = f"{n} DDIM samples of {prompt!r}"
        rgb = (samples.clamp(0, 1).numpy() * 255).round().astype(np.uint8)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda f: np.savez_compressed(f, rgb=rgb, how=how))
        self.prior_how.add(how)
        return torch.from_numpy(rgb.astype(np.float32) / 255.0)


def _nan_to_none(x):
    return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else x


def evaluate_sweep(sweep_dir: Path, metrics: list[str] | None = None, weights: str = "real",
                   lpips_net: str = models.LPIPS_DEFAULT_NET, lpips_trunk: str | None = None,
                   clip: str = models.CLIP_DEFAULT, inception: str | None = None,
                   prior_samples: int | None = None, log=print, device: str | torch.device = "auto") -> dict:
    """Compute ``metrics`` over <sweep_dir>'s finished runs on ``device`` (auto, cpu, cuda,
    cuda:N or a torch.device); write and return evaluation.json."""
    from src.build import check_device

    device = device if isinstance(device, torch.device) else check_device(device, "device")
    sweep_dir = Path(sweep_dir)
    metrics = list(METRICS) if metrics is None else metrics
    runs = find_runs(sweep_dir)
    if not runs:
        raise FileNotFoundError(f"no runs (.hydra/overrides.yaml) under {sweep_dir}")
    needs = {METRICS[m][1] for m in metrics if METRICS[m][1]}
    models.check_weights(needs, weights, lpips_net, lpips_trunk, clip, inception)  # before compute
    if {"fid", "kid"} & set(metrics):  # the priors that will draw FID's samples (SD weights)
        from src.build import component_class

        for run in runs:
            cfg = run_config(run.dir) if run.finished else None
            if cfg is not None:
                component_class(cfg, "backbone").validate_config(cfg.backbone, "backbone")
    ev = Evaluator(sweep_dir, weights, lpips_net, lpips_trunk, clip, inception, prior_samples, device)
    keys = group_keys(runs, sweep_dir)
    out: dict = {"weights": weights, "metrics": metrics, "device": str(device),
                 "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
                 "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                 "runs": {}, "groups": [], "skipped": []}
    for run in runs:
        if not run.finished:
            out["skipped"].append({"run": relative(run, sweep_dir), "status": run.status, "error": run.error})
    t0 = time.time()
    for setting, members in group_runs(runs, keys):
        done = [r for r in members if r.finished]
        label = ",".join(f"{k}={v}" for k, v in setting.items()) or "all"
        log(f"evaluate {label}: {len(done)} finished run(s)")
        with_renders = [r for r in done if ev.renders(r) is not None]
        for r in done:
            if r not in with_renders:
                out["skipped"].append({"run": relative(r, sweep_dir), "status": r.status,
                                       "error": "no renders in export/ (turntable_frames.npz, image_*.png)"})
        for r in with_renders:  # per run
            row = {}
            if "clip_distance" in metrics:
                cfg = run_config(r.dir)
                row["clip_distance"] = clip_distance(ev.net("clip"), ev.clip_embeddings(r), str(cfg.prompt or ""))
            if {"iq", "iv", "ig"} & set(metrics):
                row.update({k: v for k, v in inception_gain(ev.inception(r)[1]).items() if k in metrics})
            if row:
                out["runs"][relative(r, sweep_dir)] = {k: _nan_to_none(v) for k, v in row.items()}
        group = {"setting": setting, "runs": [relative(r, sweep_dir) for r in done]}
        comparable = same_cameras([ev.frames[r.dir] for r in with_renders])
        if not comparable:
            group["note"] = "renders of different cameras or sizes: LPIPS-D and CLIP-D left out"
        if "lpips_d" in metrics:
            group["lpips_d"] = lpips_d(ev.net("lpips"), [ev.renders(r) for r in with_renders]) \
                if comparable else math.nan
        if "clip_d" in metrics:
            group["clip_d"] = clip_d([ev.clip_embeddings(r) for r in with_renders]) if comparable else math.nan
        if "chamfer_d" in metrics:
            shapes = [s for s in (shape_points(r.dir) for r in done) if s is not None]
            group["chamfer_d"], group["n_shapes"] = chamfer_d(shapes), len(shapes)
        if {"fid", "kid"} & set(metrics) and with_renders:
            feats = torch.cat([ev.inception(r)[0] for r in with_renders])
            prior = ev.prior(with_renders[0])
            prior_feats = inception_outputs(ev.net("inception"), prior, device=device)[0]
            group["n_renders"], group["n_prior"] = len(feats), len(prior_feats)
            if "fid" in metrics:
                group["fid"] = fid(feats, prior_feats)
            if "kid" in metrics:
                group["kid"], group["kid_std"] = kid(feats, prior_feats)
        out["groups"].append({k: _nan_to_none(v) for k, v in group.items()})
    out["prior_samples"] = {"n": prior_samples, "how": "; ".join(sorted(ev.prior_how)) or "none"}
    out["seconds"] = round(time.time() - t0, 1)
    text = json.dumps(out, indent=2, allow_nan=False)
    atomic_write(sweep_dir / EVALUATION, lambda f: f.write(text.encode()))
    return out


def log_summary(sweep_dir: Path, mode: str = "offline") -> str | None:
    """One W&B run in the sweep's group (job_type "evaluation"): the report's table, its figures
    (report.png, grid.png, tradeoff.png, modes.png) and the group metrics as its summary. Returns
    the run's directory (or None when ``mode`` is "disabled")."""
    if mode == "disabled":
        return None
    import csv

    import wandb
    import yaml

    from src.studies.report import GRID_PNG, MODES_PNG, REPORT_CSV, REPORT_PNG, TRADEOFF_PNG
    from src.sweeps import SPEC_RECORD

    sweep_dir = Path(sweep_dir)
    record = sweep_dir / SPEC_RECORD
    spec = (yaml.safe_load(record.read_text()) or {}) if record.exists() else {}
    fixed = spec.get("overrides") or {}
    name = spec.get("name") or sweep_dir.name
    run = wandb.init(project=fixed.get("logger.wandb.project", "distillery"),
                     entity=fixed.get("logger.wandb.entity"), group=fixed.get("logger.wandb.group", name),
                     job_type="evaluation", name=f"{name}-evaluation", dir=str(sweep_dir), mode=mode,
                     config={"sweep": spec})
    rows = list(csv.DictReader((sweep_dir / REPORT_CSV).open()))
    if rows:
        run.log({"report": wandb.Table(columns=list(rows[0]), data=[list(r.values()) for r in rows])})
    for key, fname in (("report_png", REPORT_PNG), ("grid_png", GRID_PNG), ("tradeoff_png", TRADEOFF_PNG),
                       ("modes_png", MODES_PNG)):
        if (sweep_dir / fname).exists():
            run.log({key: wandb.Image(str(sweep_dir / fname))})
    evaluation = json.loads((sweep_dir / EVALUATION).read_text()) if (sweep_dir / EVALUATION).exists() else {}
    for g in evaluation.get("groups", []):
        label = ",".join(f"{k}={v}" for k, v in g["setting"].items()) or "all"
        run.summary.update({f"{label}/{k}": v for k, v in g.items() if isinstance(v, (int, float))})
    run_dir = str(Path(run.dir).parent)  # the offline-run-* folder (run.dir is its files/)
    run.finish()
    return run_dir
