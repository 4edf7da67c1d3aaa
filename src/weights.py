"""Model weights from disk only: a local directory or the Hugging Face cache.

Shared by every component that loads pretrained weights (Stable Diffusion backbones, CLIP /
PickScore rewards). A missing model fails within seconds, before anything is allocated or
written, naming the model, the folder searched and the one command that fetches it; a run
never starts a multi-GB download by surprise (``download=true`` allows it, never with
``HF_HUB_OFFLINE=1``).
"""

from __future__ import annotations

import os
from pathlib import Path


class WeightsNotFound(FileNotFoundError):
    """Raised before anything is allocated or written when a model is not on disk."""


def hub_cache_dir(repo_id: str, cache_dir: str | None = None) -> Path:
    """Where huggingface_hub keeps ``repo_id``: <HF_HUB_CACHE>/models--owner--name."""
    from huggingface_hub import constants

    root = Path(cache_dir or constants.HF_HUB_CACHE).expanduser()
    return root / ("models--" + repo_id.replace("/", "--"))


def hf_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").strip().lower() in ("1", "true", "yes", "on")


def missing_weights_message(what: str, repo_id: str, revision: str | None, tried: list[str],
                            reason: str, key: str) -> str:
    rev = f" --revision {revision}" if revision else ""
    where = "\n".join(f"    {p}" for p in tried)
    return (
        f"{what} {repo_id!r} are not available on this machine ({reason}).\n"
        f"  looked in:\n{where}\n"
        f"  fetch them:   hf download {repo_id}{rev}\n"
        f"      (older huggingface_hub:  huggingface-cli download {repo_id}{rev})\n"
        f"  or use a local directory:   {key}.path=/path/to/model\n"
        f"  (HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', 'unset')}; a run downloads only with "
        f"{key}.download=true and HF_HUB_OFFLINE unset)"
    )


def resolve_weights(path: str, required: tuple[str, ...], *, what: str, key: str,
                    revision: str | None = None, cache_dir: str | None = None,
                    download: bool = False, patterns: list[str] | None = None) -> tuple[Path, str]:
    """(local directory holding ``required`` entries, identity string for cache keys).

    ``path`` is a local directory or a Hub id (owner/name). Cheap: touches only the file
    system (plus the Hub when ``download`` and online). Raises WeightsNotFound otherwise.
    """
    local = Path(path).expanduser()
    if local.is_dir():
        missing = [c for c in required if not (local / c).exists()]
        if missing:
            raise WeightsNotFound(
                f"{key}.path={str(local)!r} does not hold {what}: missing {', '.join(missing)} "
                f"(expected {', '.join(required)}, as in a `hf download <model id>` snapshot)"
            )
        return local.resolve(), f"local:{local.resolve()}"
    if path.startswith((".", "/", "~")) or path.count("/") != 1:
        raise WeightsNotFound(
            f"{key}.path={path!r} is neither an existing directory nor a Hugging Face model id (owner/name)"
        )
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    tried = [str(hub_cache_dir(path, cache_dir))]
    try:
        snap = snapshot_download(path, revision=revision, cache_dir=cache_dir,
                                 allow_patterns=patterns, local_files_only=True)
    except (LocalEntryNotFoundError, FileNotFoundError, OSError) as err:
        if not download or hf_offline():
            reason = "HF_HUB_OFFLINE is set" if hf_offline() else "not in the Hugging Face cache"
            raise WeightsNotFound(missing_weights_message(what, path, revision, tried, reason, key)) from err
        try:
            snap = snapshot_download(path, revision=revision, cache_dir=cache_dir, allow_patterns=patterns)
        except Exception as err2:  # network errors, gated repos, typos: same guidance
            raise WeightsNotFound(
                missing_weights_message(what, path, revision, tried, f"download failed: {err2}", key)
            ) from err2
    snap = Path(snap)
    missing = [c for c in required if not (snap / c).exists()]
    if missing:  # an interrupted or partial download
        raise WeightsNotFound(missing_weights_message(
            what, path, revision, [str(snap)], f"incomplete: no {', '.join(missing)}", key))
    # the snapshot folder's name is the commit hash: caches of another revision never collide
    return snap, f"hub:{path}@{snap.name}"


def torch_hub_file(name: str) -> Path:
    """Where ``torch.hub.load_state_dict_from_url`` keeps a downloaded file: the folder that
    torchvision (LPIPS's trunk) and torch-fidelity (Inception) read before downloading."""
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints" / name


def resolve_weight_file(path: str | Path, *, what: str, url: str, key: str) -> Path:
    """A single weight file on disk (``path``), or WeightsNotFound naming the file and the one
    command that fetches it. For weights published as one file at a URL rather than as a
    Hugging Face repository (torchvision's AlexNet, torch-fidelity's Inception)."""
    path = Path(path).expanduser()
    if path.is_file():
        return path.resolve()
    raise WeightsNotFound(
        f"{what} are not available on this machine: no file {path}.\n"
        f"  fetch it:   mkdir -p {path.parent} && curl -L -o {path} {url}\n"
        f"  or point {key} at a local copy of the file"
    )
