"""The papers' metrics over a finished sweep, then its report and one W&B summary run.

    python scripts/evaluate.py multirun/shapes_modes_toy                   # every metric, real weights
    python scripts/evaluate.py multirun/shapes_modes_toy --weights random  # test weights (plumbing only)
    python scripts/evaluate.py multirun/x --metrics chamfer_d,lpips_d --wandb disabled
    python scripts/evaluate.py multirun/x --device cpu                     # default: cuda if there is one

Writes <sweep_dir>/evaluation.json (per-run CLIP distance, IQ/IV/IG; per setting LPIPS-D, CLIP-D,
Chamfer-D, FID/KID; src/studies/evaluate.py), then report.md/.csv/.html and its figures
(src/studies/report.py), then logs a W&B run "<sweep>-evaluation" in the sweep's group (offline by
default: `wandb sync <sweep_dir>/wandb/offline-run-*`). Failed, diverged and unfinished runs
are listed and left out. Weights are read from disk only: a metric whose weights are missing
fails before anything is computed, naming the file and the command that fetches it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from src.metrics import models  # noqa: E402
from src.studies.evaluate import log_summary  # noqa: E402
from src.weights import WeightsNotFound  # noqa: E402


def add_metric_args(p: argparse.ArgumentParser) -> None:
    """The options shared with scripts/report.py."""
    p.add_argument("--metrics", default=None,
                   help="comma list or 'all' (default): clip_distance,iq,iv,ig,lpips_d,clip_d,chamfer_d,fid,kid")
    p.add_argument("--weights", choices=models.WEIGHTS, default=None,
                   help="real (from disk, default) or random (test weights: numbers test the plumbing only)")
    p.add_argument("--lpips-net", default=models.LPIPS_DEFAULT_NET, choices=sorted(models.LPIPS_TRUNKS))
    p.add_argument("--lpips-trunk", default=None, help="the trunk's torchvision .pth (default: torch's hub cache)")
    p.add_argument("--clip", default=models.CLIP_DEFAULT, help="CLIP directory or Hugging Face id")
    p.add_argument("--inception", default=None, help="torch-fidelity's Inception .pth (default: torch's hub cache)")
    p.add_argument("--prior-samples", type=int, default=None,
                   help="prior samples per prompt for FID/KID (default: all ShapesWorld images of the prompt; 64 DDIM samples otherwise)")
    p.add_argument("--device", default="auto",
                   help="where the networks, the renders and the prior's samples are computed: auto (default: "
                        "the first GPU if there is one, else the CPU), cpu, cuda, cuda:N")


def run_evaluation(args) -> int:
    """evaluate_sweep with the parsed options; 2 on a user error (printed)."""
    from src.build import check_device
    from src.studies.evaluate import evaluate_sweep, parse_metrics

    try:
        device = check_device(args.device, "--device")  # before anything is read or loaded
        evaluate_sweep(args.sweep_dir, parse_metrics(args.metrics), args.weights or "real", args.lpips_net,
                       args.lpips_trunk, args.clip, args.inception, args.prior_samples, device=device)
    except (FileNotFoundError, ValueError) as err:  # WeightsNotFound is a FileNotFoundError
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sweep_dir", type=Path)
    add_metric_args(p)
    p.add_argument("--wandb", default="offline", choices=("offline", "online", "disabled"),
                   help="the summary run's W&B mode")
    args = p.parse_args(argv)
    rc = run_evaluation(args)
    if rc:
        return rc
    from src.studies.report import write_report

    csv_path, md_path = write_report(args.sweep_dir)
    print(md_path.read_text())
    print(f"report: {md_path.with_suffix('.html')}, {md_path}, {csv_path}, evaluation: {args.sweep_dir / 'evaluation.json'}")
    run_dir = log_summary(args.sweep_dir, args.wandb)
    if run_dir:
        print(f"W&B summary run ({args.wandb}): {run_dir}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except WeightsNotFound as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
