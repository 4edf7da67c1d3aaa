"""Issue 29 item 1: caches that verify themselves (src/cache.py). Damaged entries of every kind
are found and rebuilt and the run's result equals a clean-cache run; an unusable
DISTILLERY_CACHE falls back to memory with a warning naming it; a killed writer's temp file is
gone after the next run; the metrics' tiny CLIP is rebuilt when its files are damaged."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from src import cache
from src.api import compose, train
from src.fileio import TEMP_SUFFIX, atomic_write, stale_temp_files

REPO = Path(__file__).resolve().parents[1]
# a small world (4 classes x 8 views at 16 px) and a 2-step image run on it
WORLD = ["backbone.shapes=[sphere,cube]", "backbone.colors=[red,blue]", "backbone.n_azimuths=4",
         "backbone.n_elevations=2", "backbone.resolution=16", "backbone.supersample=1"]
RUN = ["representation=image", "prompt=a red cube", "trainer.max_steps=2", "trainer.export=false",
       "trainer.progress=false", "trainer.val_every=0", "num_threads=1", *WORLD]


def shapes_entry(root: Path) -> Path:
    (entry,) = (root / "shapes").glob("*.pt")
    return entry


def flip_bytes(path: Path) -> None:
    """Flip 64 bytes in the middle of the file (inside the tensor's data)."""
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    for i in range(mid, mid + 64):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def damage(kind: str, path: Path) -> None:
    entry = torch.load(path, weights_only=True)
    if kind == "bit-flipped":
        flip_bytes(path)
    elif kind == "zeros":  # a well-formed tensor of the right shape: not a verified entry
        torch.save(torch.zeros_like(entry["tensor"]), path)
    elif kind == "zeros-with-old-hash":  # the entry's layout, the data replaced
        torch.save({**entry, "tensor": torch.zeros_like(entry["tensor"])}, path)
    elif kind == "foreign":  # another world's verified entry under this name
        torch.save({**entry, "key": json.dumps({"another": "world"}), "tensor": torch.ones(3, 8, 8, 3)}, path)
    elif kind == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    elif kind == "wrong-dtype":
        t = entry["tensor"].double()
        torch.save({**entry, "tensor": t, "sha256": cache.digest(t)}, path)


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    """A clean-cache run's metrics and its cache entry's bytes."""
    root = tmp_path_factory.mktemp("clean_cache")
    os.environ["DISTILLERY_CACHE"] = str(root)
    try:
        metrics, _ = train(compose(RUN), tmp_path_factory.mktemp("clean_run"))
    finally:
        del os.environ["DISTILLERY_CACHE"]
    return metrics, shapes_entry(root).read_bytes()


@pytest.mark.parametrize("kind", ["bit-flipped", "zeros", "zeros-with-old-hash", "foreign", "truncated",
                                  "wrong-dtype"])
def test_a_damaged_shapes_entry_is_rebuilt_and_the_run_equals_a_clean_one(kind, clean, tmp_path, monkeypatch,
                                                                         caplog):
    ref, clean_bytes = clean
    root = tmp_path / "cache"
    root.mkdir()
    (root / "shapes").mkdir()
    monkeypatch.setenv("DISTILLERY_CACHE", str(root))
    entry = root / "shapes" / f"{compose_world_key()}.pt"
    entry.write_bytes(clean_bytes)
    damage(kind, entry)
    with caplog.at_level(logging.WARNING, logger="src.cache"):
        metrics, _ = train(compose(RUN), tmp_path / "run")
    assert f"cache entry {entry} is unusable" in caplog.text and "rebuilding it" in caplog.text
    for key in ("final_loss", "precision", "rmse"):
        assert metrics[key] == ref[key], key
    assert entry.read_bytes() == clean_bytes  # repaired on disk, identical to a clean write


def compose_world_key() -> str:
    from hydra.utils import instantiate

    cfg = compose(RUN)
    world = instantiate(cfg.backbone, cache=False)
    return world.world_key()


def test_an_intact_entry_is_read_without_a_warning(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("DISTILLERY_CACHE", str(tmp_path))
    store = cache.TensorCache("t")
    t = torch.arange(12.0).reshape(3, 4)
    store.save("a.pt", t, {"k": 1})
    with caplog.at_level(logging.WARNING, logger="src.cache"):
        assert torch.equal(store.load("a.pt", {"k": 1}, (3, 4), torch.float32), t)
        assert store.load("b.pt", {"k": 1}) is None  # absent: quietly None
    assert caplog.text == ""
    with caplog.at_level(logging.WARNING, logger="src.cache"):
        assert store.load("a.pt", {"k": 1}, (4, 3)) is None
    assert "shape (3, 4), expected (4, 3)" in caplog.text


@pytest.mark.parametrize("how", ["a file", "read-only"])
def test_an_unusable_cache_root_falls_back_to_memory_with_a_warning(how, tmp_path, monkeypatch, caplog):
    root = tmp_path / "cache"
    if how == "a file":
        root.write_text("not a directory")
    else:
        root.mkdir()
        if os.geteuid() == 0:  # root writes through permission bits: a read-only mount
            if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(root)]).returncode:
                pytest.skip("cannot mount a read-only tmpfs here")
        else:
            root.chmod(0o555)
    monkeypatch.setenv("DISTILLERY_CACHE", str(root))
    cache._warned.clear()
    try:
        with caplog.at_level(logging.WARNING, logger="src.cache"):
            metrics, _ = train(compose(RUN), tmp_path / "run")
    finally:
        if how == "read-only" and os.geteuid() == 0:
            subprocess.run(["umount", str(root)], check=True)
    assert f"DISTILLERY_CACHE={root} cannot be used for the cache {root / 'shapes'}" in caplog.text
    assert "keeping it in memory" in caplog.text
    assert metrics["status"] == "finished"


WRITER = """
import sys, time
from pathlib import Path
from src.fileio import atomic_write
def write(f):
    f.write(b"x" * 1000)
    f.flush()
    print("writing", flush=True)
    time.sleep(600)
atomic_write(Path(sys.argv[1]) / "shapes" / "0123456789abcdef.pt", write)
"""


def test_a_killed_cache_writer_leaves_no_temp_file_after_the_next_run(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(root)], cwd=REPO, stdout=subprocess.PIPE,
                              text=True)
    assert writer.stdout.readline().strip() == "writing"
    (temp,) = stale_temp_files(root / "shapes")
    assert temp.name.startswith(f".0123456789abcdef.pt.{writer.pid}@") and temp.name.endswith(TEMP_SUFFIX)
    monkeypatch.setenv("DISTILLERY_CACHE", str(root))
    cache.TensorCache("shapes")  # while the writer lives, its file is left alone
    assert temp.exists()
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    train(compose(RUN), tmp_path / "run")
    assert not temp.exists() and not stale_temp_files(root / "shapes")  # at once, not after 24 h


def test_the_tiny_clip_is_rebuilt_when_its_files_are_damaged(tmp_path, caplog):
    from src.metrics.models import load_clip, write_tiny_clip

    root = write_tiny_clip(tmp_path / "tiny_clip")
    weights = root / "model.safetensors"
    clean = weights.read_bytes()
    prompt_emb = load_clip("random", cache=tmp_path).text_embedding("a red cube")
    weights.write_bytes(clean[: len(clean) // 2])  # truncated
    with caplog.at_level(logging.WARNING, logger="src.cache"):
        again = load_clip("random", cache=tmp_path).text_embedding("a red cube")
    assert "model.safetensors" in caplog.text and "rebuilding it" in caplog.text
    assert weights.read_bytes() == clean and torch.equal(again, prompt_emb)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(TEMP_SUFFIX)]


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 64 KiB tmpfs (root only): a real full disk."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)]).returncode:
        pytest.skip("cannot mount a tmpfs here")
    yield mnt
    subprocess.run(["umount", str(mnt)], check=True)


def test_atomic_write_names_the_path_when_torch_save_hits_a_full_disk(small_tmpfs):
    """torch.save's zip writer turns the write's ENOSPC into 'RuntimeError ... unexpected pos';
    atomic_write gives back the OSError with the path, and leaves no temp file."""
    import errno

    target = small_tmpfs / "x.pt"
    with pytest.raises(OSError) as err:
        atomic_write(target, lambda f: torch.save(torch.zeros(100_000), f))
    assert err.value.errno == errno.ENOSPC and err.value.filename == str(target)
    assert "No space left on device" in str(err.value) and not list(small_tmpfs.iterdir())


def test_a_full_cache_disk_is_a_warning_and_the_value_stays_in_memory(small_tmpfs, caplog):
    store = cache.TensorCache("t", small_tmpfs)
    with caplog.at_level(logging.WARNING, logger="src.cache"):
        store.save("big.pt", torch.zeros(100_000), {"k": 1})
    assert f"could not write the cache entry {small_tmpfs / 't' / 'big.pt'}" in caplog.text
    assert not stale_temp_files(small_tmpfs / "t")
