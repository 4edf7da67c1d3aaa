"""Measure the papers' toy claims, every number the README's toy table quotes, in one run:

    python scripts/toy_claims.py [--seeds 0 1] [--jobs 2]   -> benchmarks/toy_claims.{json,md}

- ESD App. B (experiment=esd_toy): covariance trace ratio of SDS, VSD and ESD(lam) and ESD's
  relative covariance error at lam = 1.
- SSD Sec. 13 (experiment=ssd_toy): median distance of the 8 particles to the transient point
  [1.5, 1] (mode seeking alone) and to the nearest conditional mode (SSD), per seed.
- The 4-mode mixture (experiment=mog_diversity, K = 64 particles from one point): modes covered
  (of 4) and precision, every method of conf/guidance/, per seed.

Each run is ``python -m src.train``'s config (src.api.compose); runs go to a process pool, one
torch thread each.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from src.api import compose, train
from src.configs import guidance_names

ROOT = Path(__file__).resolve().parents[1]
ESD_RUNS = [("sds", ["guidance=sds"]), ("vsd", ["guidance=vsd"])] + [
    (f"esd lam={lam}", ["guidance=esd", f"guidance.lam={lam}"]) for lam in (0.25, 0.5, 0.75, 1.0)]
SSD_TRANSIENT = (1.5, 1.0)
SSD_MODES = ((1.0, 1.0), (2.0, 1.0))


def run(overrides: list[str]):
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as d:
        return train(compose(["trainer.export=false", "trainer.progress=false", *overrides]), d)


def esd(seed: int, name: str, ov: list[str]) -> dict:
    m, _ = run(["experiment=esd_toy", f"seed={seed}", *ov])
    return {"claim": "esd_app_b", "run": name, "seed": seed, "cov_trace_ratio": m["cov_trace_ratio"],
            "cov_rel_error": m["cov_rel_error"], "mean_error": m["mean_error"]}


def ssd(seed: int, terms: str) -> dict:
    _, tr = run(["experiment=ssd_toy", "guidance=ssd", f"guidance.terms={terms}", f"seed={seed}"])
    x = tr.c.representation.x.detach()
    transient = (x - torch.tensor(SSD_TRANSIENT, dtype=x.dtype)).norm(dim=1).median()
    mode = torch.cdist(x, torch.tensor(SSD_MODES, dtype=x.dtype)).min(dim=1).values.median()
    return {"claim": "ssd_sec13", "run": terms, "seed": seed, "median_to_transient": float(transient),
            "median_to_mode": float(mode)}


def mog(seed: int, method: str) -> dict:
    m, _ = run(["experiment=mog_diversity", f"guidance={method}", f"seed={seed}"])
    return {"claim": "mog_diversity", "run": method, "seed": seed, "modes_found": m["modes_found"],
            "mode_coverage": m["mode_coverage"], "precision": m["precision"]}


def markdown(rows: list[dict], seeds: list[int]) -> str:
    def cell(claim, name, key, fmt):
        vals = [r[key] for s in seeds for r in rows if r["claim"] == claim and r["run"] == name and r["seed"] == s]
        return " / ".join(format(v, fmt) for v in vals)

    lines = [f"# Toy claims (`python scripts/toy_claims.py --seeds {' '.join(map(str, seeds))}`)", "",
             f"Values per seed ({' / '.join(map(str, seeds))}).", "",
             "## ESD App. B (experiment=esd_toy)", "", "| run | cov trace ratio | cov rel. error |", "|---|---|---|"]
    lines += [f"| {n} | {cell('esd_app_b', n, 'cov_trace_ratio', '.3g')} | {cell('esd_app_b', n, 'cov_rel_error', '.3f')} |"
              for n, _ in ESD_RUNS]
    lines += ["", "## SSD Sec. 13 (experiment=ssd_toy, median over 8 particles)", "",
              "| terms | to transient [1.5, 1] | to nearest conditional mode |", "|---|---|---|"]
    lines += [f"| {t} | {cell('ssd_sec13', t, 'median_to_transient', '.3f')} | {cell('ssd_sec13', t, 'median_to_mode', '.3f')} |"
              for t in ("seeking", "ssd")]
    lines += ["", "## 4-mode mixture (experiment=mog_diversity, K = 64 from one point)", "",
              "| method | modes found (of 4) | precision |", "|---|---|---|"]
    lines += [f"| {m} | {cell('mog_diversity', m, 'modes_found', '.0f')} | {cell('mog_diversity', m, 'precision', '.2f')} |"
              for m in guidance_names()]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "toy_claims"))
    args = ap.parse_args()
    jobs = [(esd, (s, n, ov)) for s in args.seeds for n, ov in ESD_RUNS]
    jobs += [(ssd, (s, t)) for s in args.seeds for t in ("seeking", "ssd")]
    jobs += [(mog, (s, m)) for s in args.seeds for m in guidance_names()]
    t0 = time.time()
    with ProcessPoolExecutor(args.jobs) as pool:
        rows = [f.result() for f in [pool.submit(fn, *a) for fn, a in jobs]]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"seeds": args.seeds, "rows": rows}, indent=1))
    md = markdown(rows, args.seeds)
    out.with_suffix(".md").write_text(md)
    print(md)
    print(f"{len(jobs)} runs in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
