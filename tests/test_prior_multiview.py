"""The learned multi-view prior (scripts/train_prior.py --multiview): a tiny MVDream of a small
ShapesWorld, trained here for a few steps, loads through ``backbone=mvdream``'s own loading code
(conf/backbone/shapes_mvdream.yaml), distils with camera=multiview and gets the world's exact
metrics; its training tells each view the camera that inference tells it, bit for bit."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"

from scripts import train_prior, train_prior_multiview  # noqa: E402
from src.backbones.mvdream import MultiViewAttnProcessor, MVDream  # noqa: E402
from tests import test_prior  # noqa: E402
from tests.helpers import one_thread  # noqa: E402, F401  (autouse fixture)
from tests.test_prior import SMALL_WORLD  # noqa: E402

prior_cache = test_prior.cache  # a fresh DISTILLERY_CACHE for the module (tests/test_prior.py: cache)

V = 4


def _main(*args: str) -> int:
    return train_prior.main(["--size", "tiny", *args, *SMALL_WORLD])


@pytest.fixture(scope="module")
def models(tmp_path_factory, prior_cache) -> tuple[Path, Path]:
    """(a tiny single-view model, the multi-view model fine-tuned from it with --init-from)."""
    root = tmp_path_factory.mktemp("mv")
    assert _main("--out", str(root / "sd"), "--work", str(root / "wsd"), "--unet-steps", "1") == 0
    assert _main("--multiview", "--init-from", str(root / "sd"), "--unet-steps", "2",
                 "--out", str(root / "mv"), "--work", str(root / "wmv")) == 0
    return root / "sd", root / "mv"


def test_the_repository_is_mvdreams_unet_with_the_world_and_its_card(models):
    from omegaconf import OmegaConf
    from safetensors.torch import load_file

    sd, mv = models
    unet = json.loads((mv / "unet" / "config.json").read_text())
    assert (unet["class_embed_type"], unet["projection_class_embeddings_input_dim"]) == ("projection", 16)
    world = OmegaConf.load(mv / "world.yaml")
    assert (world.view_conditioning, world.views_per_set, world.resolution) == ("multiview", V, 16)
    log = json.loads((mv / "train_log.json").read_text())
    assert log["views_per_set"] == V and log["init_from"] == str(sd) and log["overrides"] == SMALL_WORLD
    assert log["final_loss"]["vae"] is None and log["size"]["unet_steps"] == 2
    # --init-from: the VAE and the text encoder are the single-view model's, unchanged (frozen)
    for sub, f in (("vae", "diffusion_pytorch_model.safetensors"), ("text_encoder", "model.safetensors")):
        a, b = load_file(sd / sub / f), load_file(mv / sub / f)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), sub
    card = (mv / "README.md").read_text()
    assert f"UNet epsilon MSE {log['final_loss']['unet']:.4g}" in card and "{" not in card.replace("```", "")
    assert (f"--multiview --views 4 --init-from {sd} --unet-steps 2 --unet-batch 4 --unet-lr 0.0001 --seed 0 "
            f"--out {mv} --device cpu {' '.join(SMALL_WORLD)}\n") in card
    assert "128 ordered sets = 16 classes x 2 elevations x 4 first azimuths" in card


def test_bad_input_is_refused_before_training(models, tmp_path, capsys):
    sd, _ = models
    with pytest.raises(SystemExit):
        _main("--views", "4", "--out", str(tmp_path / "x"))
    assert "--views and --init-from go with --multiview" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _main("--multiview", "--init-from", str(sd), "--vae-from", str(sd), "--out", str(tmp_path / "x"))
    assert "--init-from takes the VAE of its model: leave --vae-from out" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="must be a multiple of --views 4"):
        _main("--multiview", "--unet-batch", "6", "--out", str(tmp_path / "x"), "--work", str(tmp_path / "w"))
    # a VAE of another world (the small world at 16 px, this one at 8 px): named, nothing trained
    with pytest.raises(SystemExit, match="was trained on another world"):
        train_prior.main(["--size", "tiny", "--multiview", "--init-from", str(sd), "--out", str(tmp_path / "y"),
                          *SMALL_WORLD, "backbone.resolution=8"])
    assert not (tmp_path / "y").exists()
    # a multi-view model is not fine-tuned again (its camera MLP would be zeroed)
    with pytest.raises(SystemExit, match="a single-view model .* is fine-tuned"):
        _main("--multiview", "--init-from", str(models[1]), "--out", str(tmp_path / "z"), "--work", str(tmp_path / "wz"))


def test_training_sets_are_the_worlds_view_sets_told_the_inference_camera(models, tmp_path):
    """A training batch: one set of V views at a0 + k 90 deg, one class, each view the class's
    image at the world camera nearest it; the camera the UNet is fed in training equals, bit for
    bit, the one ``backbone=shapes_mvdream`` feeds it at inference for the same views (and the
    views of a set attend to each other in both)."""
    from src.api import compose
    from src.build import build_components

    sd, mv = models
    world, world_cfg, camera_cfg = train_prior.world_from(SMALL_WORLD, camera="multiview")
    trainer = train_prior_multiview.MultiViewPriorTrainer(
        world, world_cfg, camera_cfg, tmp_path / "out", tmp_path / "work", train_prior.SIZES["tiny"])
    N = world.images().shape[0]
    zeros = torch.zeros(N, 4, 8, 8)
    b = trainer.unet_inputs(5, zeros, zeros)
    views, i = b["views"], b["image"]
    az = (views.azimuth_deg - views.azimuth_deg[0]) % 360
    torch.testing.assert_close(az, torch.tensor([0.0, 90.0, 180.0, 270.0]), rtol=0, atol=1e-4)
    assert bool((views.elevation_deg == views.elevation_deg[0]).all())
    assert len(set(world.class_idx[i].tolist())) == 1
    grid = world.world_views()
    for v in range(V):  # the image's camera is the world camera nearest the view (angle on the sphere)
        own = grid.c2w[i[v] % world.n_views, :3, 2]
        best = (grid.c2w[:, :3, 2] @ views.c2w[v, :3, 2]).max()
        assert float(own @ views.c2w[v, :3, 2]) == pytest.approx(float(best), abs=1e-6)

    cfg = compose(["backbone=shapes_mvdream", f"backbone.path={mv}", "backbone.dtype=float32",
                   "backbone.embedding_cache=null", "camera=multiview", "device=cpu"])
    bb = build_components(cfg).backbone
    assert type(bb) is MVDream and bb.checkpoint_path == (mv / "unet").resolve()
    fed = {}
    bb.unet.register_forward_pre_hook(lambda m, a, kw: fed.update(kw), with_kwargs=True)
    cond = bb.conditioning("a red cone")
    emb = bb.condition_on_views(cond.select(views.view_idx), views)
    with torch.no_grad():
        bb.predict_eps(b["z_t"], b["t"], emb)
    assert torch.equal(fed["class_labels"], b["class_labels"])
    assert fed["cross_attention_kwargs"] == {"num_views": trainer.views} == {"num_views": V}
    assert all(isinstance(p, MultiViewAttnProcessor) for p in trainer.unet.attn_processors.values())
    assert all(isinstance(p, MultiViewAttnProcessor) for p in bb.unet.attn_processors.values())


def test_sds_on_it_through_backbone_mvdream_gets_the_exact_metrics(models, tmp_path):
    """A shortened `python -m src.train backbone=shapes_mvdream camera=multiview` (SDS, NeRF): the
    world's cameras and size, MVDream's backbone with the model's UNet, the world's exact metrics."""
    from src.api import compose, train

    _, mv = models
    cfg = compose(["backbone=shapes_mvdream", f"backbone.path={mv}", "backbone.dtype=float32",
                   "backbone.embedding_cache=null", "camera=multiview", "prompt=a red cone", "device=cpu",
                   "trainer.max_steps=2", "trainer.export=false", "trainer.val_every=0", "camera.n_eval_views=4",
                   "trainer.progress=false"])
    assert (cfg.camera.height, list(cfg.camera.distance_range), cfg.camera.views_per_set) == (16, [2.0, 2.0], V)
    assert cfg.backbone.checkpoint == f"{mv}/unet" and cfg.guidance.scale == 7.5
    metrics, _ = train(cfg, tmp_path / "run")
    assert metrics["status"] == "finished" and metrics["steps"] == 2
    assert {"precision", "mode_id", "rmse", "nearest_class"} <= set(metrics) and metrics["rmse"] > 0
    assert 0.0 <= metrics["precision"] <= 1.0


def test_vsd_fits_its_lora_psi_on_the_learned_multiview_unet(models, tmp_path):
    """VSD on it: psi is the LoRA on the model's own multi-view UNet, zero at step 0, fitted after two
    steps of camera=multiview sets."""
    from src.api import compose
    from src.trainer import Trainer

    _, mv = models
    cfg = compose(["backbone=shapes_mvdream", f"backbone.path={mv}", "backbone.dtype=float32",
                   "backbone.embedding_cache=null", "camera=multiview", "guidance=vsd", "prompt=a red cone",
                   "device=cpu", "trainer.max_steps=2", "trainer.progress=false", "trainer.export=false",
                   "trainer.val_every=0"])
    trainer = Trainer(cfg, tmp_path / "run")
    bb, psi = trainer.c.backbone, trainer.c.guidance.psi
    assert type(psi).__name__ == "LoRAScore" and psi.backbone.unet is bb.unet
    lora_b = [p for n, p in bb.unet.named_parameters() if "lora_B" in n]
    assert lora_b and all(float(p.abs().max()) == 0.0 for p in lora_b)
    for step in range(2):
        assert torch.isfinite(torch.tensor(float(trainer.train_step(step)["psi_loss"])))
    assert all(float(p.detach().abs().max()) > 0 for p in lora_b)


def test_init_from_starts_as_the_single_view_unet(models, tmp_path):
    """--init-from (MVDream's recipe): before any step the multi-view UNet is the single-view one
    wherever the views do not meet (one view a set): the camera MLP's output is zero, every other
    weight is the source's."""
    from diffusers import UNet2DConditionModel

    sd, _ = models
    world, world_cfg, camera_cfg = train_prior.world_from(SMALL_WORLD, camera="multiview")
    trainer = train_prior_multiview.MultiViewPriorTrainer(
        world, world_cfg, camera_cfg, tmp_path / "out", tmp_path / "work", train_prior.SIZES["tiny"], init_from=sd)
    source = UNet2DConditionModel.from_pretrained(sd, subfolder="unet", torch_dtype=torch.float32)
    g = torch.Generator().manual_seed(0)
    x, t, emb = torch.randn(4, 4, 8, 8, generator=g), torch.tensor([5, 300, 600, 990]), torch.randn(4, 16, 16, generator=g)
    cam = train_prior_multiview.camera_labels(trainer.sampler.sample(0, g))
    with torch.no_grad():
        got = trainer.unet(x, t, encoder_hidden_states=emb, class_labels=cam,
                           cross_attention_kwargs={"num_views": 1}).sample
        torch.testing.assert_close(got, source(x, t, encoder_hidden_states=emb).sample, rtol=0, atol=0)
    assert trainer.trainable() == list(trainer.unet.parameters())  # the text encoder stays frozen


def test_the_check_sees_no_camera_at_step_0(models, tmp_path):
    """scripts/prior_multiview_check.py on the tiny model: a row for the model it was fine-tuned from
    (step 0: its camera MLP's output is zero, so every camera gives the same MSE, exactly) and one
    for the model; written as <out>.json / .md with the command and how the model was made."""
    from scripts import prior_multiview_check

    _, mv = models
    out = tmp_path / "check"
    assert prior_multiview_check.main([str(mv), "--out", str(out), "--batches", "1", "--batch", "4"]) == 0
    data = json.loads(out.with_suffix(".json").read_text())
    step0, trained = data["rows"]
    assert (step0["variant"], trained["variant"], trained["unet_steps"]) == ("step 0", "trained", 2)
    assert step0["true"] == step0["az+180"] == step0["zero camera"] > 0
    assert all(trained[c] > 0 for c in prior_multiview_check.COLUMNS)
    md = out.with_suffix(".md").read_text()
    assert data["command"] in md and f"--init-from {models[0]} --unet-steps 2" in md


def test_resumed_training_equals_uninterrupted(models, tmp_path):
    """Stopped after one step and continued to two (state.pt), the multi-view fine-tune writes the
    UNet the uninterrupted two steps wrote (the fixture's), bit for bit."""
    from safetensors.torch import load_file

    sd, mv = models
    args = ["--multiview", "--init-from", str(sd), "--out", str(tmp_path / "m"), "--work", str(tmp_path / "w")]
    assert _main(*args, "--unet-steps", "1", "--checkpoint-every", "1") == 0
    assert _main(*args, "--unet-steps", "2") == 0
    f = "unet/diffusion_pytorch_model.safetensors"
    a, b = load_file(mv / f), load_file(tmp_path / "m" / f)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
