"""Every random generator of a run (DESIGN.md "Randomness"): one derivation, named streams.

A generator is fixed by (run seed, stream, index): the index is the training step for
per-step draws (camera, noise, timestep, psi's DSM batch, DSD's delta) and the object for
per-object draws (FSD's and DSD's fixed noise, the world map). Streams are independent by
construction: the seed of a generator is a cryptographic hash of the triple, so no two
triples share a generator (tests/test_rng.py draws from every stream over many seeds, steps
and objects and finds no two alike). That is also what makes a run resumed at step k
bit-identical to an uninterrupted one without storing any RNG state.

Nothing else in ``src/`` seeds torch: code that needs randomness takes a generator (k-diffusion's
``noise_sampler=`` habit) and callers get one from here.
"""

from __future__ import annotations

import enum
import hashlib

import torch


class Stream(enum.IntEnum):
    """Named random streams. Values are part of the derivation: never renumber one."""

    CAMERA = 1  # per step: the views the trainer samples
    NOISE = 2  # per step: the estimator's fresh eps
    TIMESTEP = 3  # per step: t ~ schedule
    PSI = 4  # per step: psi's denoising score-matching batch (t', eps', camera dropout)
    DSD_DELTA = 5  # per step: DSD's t_d = t + U * 0.1 * (t - t_min)
    GLOBAL = 6  # per step: torch's global RNG (draws made inside libraries, e.g. stratified rays)
    FIXED_NOISE = 7  # per object: FSD's fixed eps on fixed cameras, DSD's eps*
    WORLD_MAP = 8  # per object: FSD's periodic world-map noise eps_p
    WORLD_BACKGROUND = 9  # per object: FSD's background noise eps_b
    INIT = 10  # once: parameter initialisation (representation, psi, camera MLPs)
    EVAL = 11  # once: fixed evaluation inputs (the affine toy's evaluation codes)
    METRICS = 12  # once: draws of the metrics over finished runs (surface points, KID subsets)
    PRIOR = 13  # per step: a training batch of a learned prior (scripts/train_prior.py)


def derive(seed: int, stream: Stream, index: int = 0) -> int:
    """The 63-bit seed of generator (seed, stream, index)."""
    key = f"distillery/{int(seed)}/{int(stream)}/{int(index)}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> 1


def generator(seed: int, stream: Stream, index: int = 0) -> torch.Generator:
    """A CPU generator for (seed, stream, index); draw on the CPU and move the result."""
    return torch.Generator().manual_seed(derive(seed, stream, index))


def seed_global(seed: int, stream: Stream, index: int = 0) -> None:
    """Seed torch's global RNG (CPU and CUDA) from (seed, stream, index).

    What ``torch.manual_seed`` does for the two devices a run may use, without its other half: on
    a machine without CUDA it queues the CUDA, XPU and MTIA seeds for a later initialization,
    with a formatted stack each (about a millisecond; the trainer seeds every step)."""
    s = derive(seed, stream, index)
    torch.default_generator.manual_seed(s)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(s)


def plain(seed: int) -> torch.Generator:
    """``torch.Generator().manual_seed(seed)`` itself, for diagnostics whose recorded draws were made
    with it (src/studies/diagnostics/); runs use ``generator``'s named streams."""
    return torch.Generator().manual_seed(int(seed))
