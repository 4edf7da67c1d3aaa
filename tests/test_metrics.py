"""Metrics over finished runs (src/metrics/): values on inputs whose answer is known.

Networks are built in-process: LPIPS with a random trunk (``pnet_rand``), a tiny random CLIP,
a random feature extractor in place of Inception. Real weights are never downloaded: a
metric that needs absent ones fails before any compute, naming the file.
"""

import json
import math

import numpy as np
import pytest
import torch
import yaml
from omegaconf import OmegaConf

from src.metrics import models
from src.metrics.chamfer import chamfer_d, chamfer_distance, mesh_points, shape_points
from src.metrics.clip import clip_d, clip_distance, clip_embeddings, cosine_distance
from src.metrics.inception import fid, inception_gain, inception_outputs, kid
from src.metrics.modes import distinct_modes, mode_entropy
from src.metrics.perceptual import lpips_d, lpips_distance
from src.studies.evaluate import evaluate_sweep, parse_metrics
from src.weights import WeightsNotFound


# -- exact diversity of mode ids --------------------------------------------------------------
@pytest.mark.parametrize("modes, distinct, bits", [
    ([12, 15, 14, 13], 4, 2.0),            # the mode table's FSD row: four objects, log2(4) bits
    ([12, 12, 12, 12], 1, 0.0),            # SDS: one object
    ([3, 3, 7, 7], 2, 1.0),
    ([3, 3, 3, 7], 2, 0.8112781244591328),  # -(3/4 log2 3/4 + 1/4 log2 1/4)
    ([5, -1, None, float("nan")], 1, 0.0),  # no mode / missing values are not modes
])
def test_distinct_modes_and_entropy(modes, distinct, bits):
    assert distinct_modes(modes) == distinct
    assert mode_entropy(modes) == pytest.approx(bits, abs=1e-12)


def test_entropy_without_any_mode_is_nan():
    assert math.isnan(mode_entropy([-1, -1])) and distinct_modes([-1]) == 0


# -- Chamfer ----------------------------------------------------------------------------------
def test_chamfer_known_pairs():
    a = np.array([[0.0, 0, 0], [1, 0, 0]])
    assert chamfer_distance(a, a) == 0.0
    b = a + [0.0, 0.0, 0.25]  # every point's nearest neighbour is its own copy, 0.25 away
    assert chamfer_distance(a, b) == pytest.approx(0.25)
    # weighted: from a the distances are (0, 1) with weights (1, 3) -> 3/4; from b = {0}: 0
    assert chamfer_distance(a, np.zeros((1, 3)), wa=[1.0, 3.0]) == pytest.approx(0.5 * 0.75)
    # a group: the mean over the three pairs (0.25, 0.5, 0.25)
    shapes = [(a, np.ones(2)), (b, np.ones(2)), (a + [0, 0, 0.5], np.ones(2))]
    assert chamfer_d(shapes) == pytest.approx((0.25 + 0.5 + 0.25) / 3)
    assert math.isnan(chamfer_d(shapes[:1]))


def test_mesh_points_same_mesh_same_points_and_chamfer_of_a_shift(tmp_path):
    import trimesh

    sphere = trimesh.creation.icosphere(subdivisions=3, radius=0.5)
    p1, p2 = mesh_points(sphere), mesh_points(sphere.copy())
    assert np.array_equal(p1[0], p2[0])  # one fixed draw: identical meshes, distance exactly 0
    far = sphere.copy().apply_translation([10.0, 0, 0])
    # spheres 10 apart: every nearest neighbour is on the facing side, 9 to 11 away
    assert 9.0 < chamfer_distance(p1[0], mesh_points(far)[0]) < 11.0
    run = tmp_path / "run"
    (run / "export").mkdir(parents=True)
    sphere.export(run / "export" / "mesh.ply")
    pts, w = shape_points(run)
    assert pts.shape == (4096, 3) and np.allclose(np.linalg.norm(pts, axis=1), 0.5, atol=0.02)


def test_gaussian_centres_weighted_by_opacity(tmp_path):
    from src.export.gaussians import PLY_PROPERTIES, write_gaussians_ply

    table = np.zeros((3, len(PLY_PROPERTIES)), np.float32)
    table[:, 0] = [0.0, 1.0, 2.0]  # x
    table[:, PLY_PROPERTIES.index("opacity")] = [0.0, 10.0, -20.0]  # logits: 0.5, ~1, invisible
    write_gaussians_ply(table, tmp_path / "export" / "gaussians.ply")
    pts, w = shape_points(tmp_path)
    assert pts[:, 0].tolist() == [0.0, 1.0]  # the invisible one is left out
    assert w == pytest.approx([0.5, 1 / (1 + math.exp(-10))])


# -- LPIPS ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lpips_random():
    return models.load_lpips("random")


def test_lpips_d_zero_for_identical_seeds_and_mean_over_pairs(lpips_random):
    g = torch.Generator().manual_seed(0)
    a, b, c = (torch.rand(3, 64, 64, 3, generator=g) for _ in range(3))
    assert lpips_d(lpips_random, [a, a.clone(), a.clone()]) == 0.0
    # a known pair: the lpips package's own forward on [-1, 1] images, averaged over the views
    direct = lpips_random(a.permute(0, 3, 1, 2) * 2 - 1, b.permute(0, 3, 1, 2) * 2 - 1).mean().item()
    assert lpips_distance(lpips_random, a, b) == pytest.approx(direct, rel=1e-5) and direct > 0
    pairs = [lpips_distance(lpips_random, x, y) for x, y in ((a, b), (a, c), (b, c))]
    assert lpips_d(lpips_random, [a, b, c]) == pytest.approx(sum(pairs) / 3, rel=1e-6)
    with pytest.raises(ValueError, match="same cameras"):
        lpips_distance(lpips_random, a, b[:2])


def test_lpips_random_weights_are_reproducible(lpips_random):
    torch.manual_seed(123)  # the caller's global RNG neither matters nor changes
    state = torch.random.get_rng_state()
    again = models.load_lpips("random")
    assert torch.equal(torch.random.get_rng_state(), state)
    for (n, p), (_, q) in zip(lpips_random.named_parameters(), again.named_parameters()):
        assert torch.equal(p, q), n


def test_lpips_real_trunk_is_read_from_the_file(tmp_path):
    import torchvision

    alex = torchvision.models.alexnet(weights=None)
    path = tmp_path / "alexnet.pth"
    torch.save(alex.state_dict(), path)
    model = models.load_lpips("real", "alex", str(path))
    assert torch.equal(getattr(model.net.slice1, "0").weight, alex.features[0].weight)
    assert torch.equal(getattr(model.net.slice5, "10").bias, alex.features[10].bias)


# -- CLIP -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    return models.load_clip("random", cache=tmp_path_factory.mktemp("clip"))


def test_cosine_distance_known_vectors():
    e = torch.eye(3)
    assert cosine_distance(e, e) == 0.0
    assert cosine_distance(e[:1], e[1:2]) == pytest.approx(1.0)  # orthogonal
    assert cosine_distance(e[:1], -e[:1]) == pytest.approx(2.0)  # opposite
    # a group of three: pairs (1, 1, 0) -> 2/3
    assert clip_d([e[:1], e[1:2], e[1:2]]) == pytest.approx(2 / 3)


def test_clip_d_and_distance_with_a_tiny_clip(tiny_clip):
    g = torch.Generator().manual_seed(1)
    a, b = torch.rand(4, 48, 48, 3, generator=g), torch.rand(4, 48, 48, 3, generator=g)
    ea, eb = clip_embeddings(tiny_clip, a), clip_embeddings(tiny_clip, b)
    assert ea.shape == (4, 8) and torch.allclose(ea.norm(dim=-1), torch.ones(4))
    assert clip_d([ea, clip_embeddings(tiny_clip, a.clone())]) == pytest.approx(0.0, abs=1e-6)
    cos = (ea * eb).sum(-1)
    assert clip_d([ea, eb]) == pytest.approx(float((1 - cos).mean()), rel=1e-5)
    text = tiny_clip.text_embedding("a red cone")
    assert clip_distance(tiny_clip, ea, "a red cone") == pytest.approx(float((1 - ea @ text[0]).mean()), rel=1e-5)


# -- Inception: FID / KID / IQ / IV / IG ---------------------------------------------------------
def test_fid_of_a_set_with_itself_and_of_a_shift():
    g = torch.Generator().manual_seed(0)
    f = torch.randn(200, 8, generator=g, dtype=torch.float64)
    assert fid(f, f.clone()) == pytest.approx(0.0, abs=1e-6)
    shift = torch.tensor([3.0, 4.0] + [0.0] * 6, dtype=torch.float64)
    assert fid(f, f + shift) == pytest.approx(25.0, rel=1e-6)  # same covariance: |mu_1 - mu_2|^2
    # KID (unbiased MMD^2): ~0 for two draws of one distribution, large for the shifted one
    k_same, _ = kid(f, torch.randn(200, 8, generator=g, dtype=torch.float64), subsets=20)
    k_shift, _ = kid(f, f + shift, subsets=20)
    assert abs(k_same) < 0.01 * k_shift and k_shift > 10.0


def test_inception_gain_known_distributions():
    log = torch.log
    uniform = log(torch.full((3, 4), 0.25))
    out = inception_gain(uniform)  # every view unsure, all alike: IQ = IV = log 4, IG = 0
    assert out["iq"] == pytest.approx(math.log(4)) and out["iv"] == pytest.approx(math.log(4))
    assert out["ig"] == pytest.approx(0.0, abs=1e-12)
    halves = log(torch.tensor([[0.5, 0.5, 0.0, 0.0], [0.0, 0.0, 0.5, 0.5]]))
    out = inception_gain(halves)  # IQ = log 2, IV = log 4: IG = 1
    assert out["iq"] == pytest.approx(math.log(2)) and out["ig"] == pytest.approx(1.0)


def test_injected_feature_extractor_takes_uint8_images():
    seen = {}

    def extractor(x):
        seen["dtype"], seen["shape"] = x.dtype, tuple(x.shape)
        f = x.float().mean((2, 3))
        return f, f

    feats, logits = inception_outputs(extractor, np.full((5, 16, 16, 3), 255, np.uint8), chunk=2)
    assert seen == {"dtype": torch.uint8, "shape": (1, 3, 16, 16)} and feats.shape == (5, 3)
    assert float(feats.max()) == 255.0


# -- weights from disk only -------------------------------------------------------------------
@pytest.fixture
def no_weights(tmp_path, monkeypatch):
    import huggingface_hub.constants as hc

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path


def test_missing_weights_name_the_file_and_the_command(no_weights):
    with pytest.raises(WeightsNotFound) as err:
        models.check_weights({"lpips", "clip", "inception"})
    text = str(err.value)
    trunk = no_weights / "torch" / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth"
    assert str(trunk) in text and f"curl -L -o {trunk}" in text
    assert "weights-inception-2015-12-05-6726825d.pth" in text
    assert f"hf download {models.CLIP_DEFAULT}" in text and "--weights random" in text
    models.check_weights({"lpips", "clip", "inception"}, "random")  # test weights need no file


# -- a sweep --------------------------------------------------------------------------------
def _sweep(tmp_path, frames_by_seed, mesh_by_seed=None, statuses=None):
    """A fake ShapesWorld sweep: one setting, the given renders per seed."""
    from src.api import compose

    cfg = compose(["trainer.max_steps=1"])
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump({"grid": {"guidance": ["sds"],
                                                                   "seed": list(range(len(frames_by_seed)))}}))
    for seed, frames in enumerate(frames_by_seed):
        run = tmp_path / f"guidance=sds,seed={seed}"
        (run / ".hydra").mkdir(parents=True)
        (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(["guidance=sds", f"seed={seed}"]))
        OmegaConf.save(cfg, run / ".hydra" / "config.yaml")
        status = (statuses or {}).get(seed, "finished")
        (run / "metrics.json").write_text(json.dumps({"status": status, "mode_id": 12}))
        (run / "export").mkdir()
        np.savez_compressed(run / "export" / "turntable_frames.npz", rgb=frames)
        if mesh_by_seed is not None:
            mesh_by_seed[seed].export(run / "export" / "mesh.ply")
    return tmp_path


def test_identical_seeds_have_zero_diversity(tmp_path):
    import trimesh

    frames = (np.random.default_rng(0).random((4, 32, 32, 3)) * 255).astype(np.uint8)
    cone = trimesh.creation.cone(0.4, 0.8)
    sweep = _sweep(tmp_path, [frames, frames.copy(), frames.copy()], [cone, cone.copy(), cone.copy()],
                   statuses={2: "diverged"})
    out = evaluate_sweep(sweep, parse_metrics("lpips_d,clip_d,chamfer_d,fid,kid,clip_distance,iq"),
                         weights="random", log=lambda *_: None)
    (group,) = out["groups"]
    assert group["runs"] == ["guidance=sds,seed=0", "guidance=sds,seed=1"]  # the diverged run is out
    assert group["lpips_d"] == 0.0 and group["clip_d"] == pytest.approx(0.0, abs=1e-6)
    assert group["chamfer_d"] == 0.0
    assert out["skipped"] == [{"run": "guidance=sds,seed=2", "status": "diverged", "error": None}]
    # FID of 8 renders against the 64 ShapesWorld images of "a red cone" at 32 px
    assert group["n_renders"] == 8 and group["n_prior"] == 64 and group["fid"] > 0
    assert set(out["runs"]["guidance=sds,seed=0"]) == {"clip_distance", "iq"}
    assert json.loads((sweep / "evaluation.json").read_text())["weights"] == "random"
    assert len(list((sweep / "prior_samples").glob("*.npz"))) == 1  # cached for the next call


def test_evaluate_fails_before_compute_without_weights(no_weights):
    sweep = _sweep(no_weights / "sweep", [np.zeros((2, 8, 8, 3), np.uint8)] * 2)
    with pytest.raises(WeightsNotFound, match="alexnet-owt-7be5be79.pth"):
        evaluate_sweep(sweep, ["lpips_d"], log=lambda *_: None)
    assert not (sweep / "evaluation.json").exists()
    out = evaluate_sweep(sweep, ["chamfer_d"], log=lambda *_: None)  # no weights needed
    assert out["groups"][0]["chamfer_d"] is None  # no meshes: null, not a crash


# -- samples of the prior ---------------------------------------------------------------------
def test_shapes_prior_samples_are_the_prompts_images_and_ddim_lands_on_them():
    from hydra.utils import instantiate

    from src import rng
    from src.api import compose
    from src.backbones.base import Backbone
    from src.backbones.shapes_metrics import image_distance

    world = instantiate(compose([]).backbone)
    data = world.images()[world.prompt_mask("a red cone")]
    assert torch.allclose(world.prior_samples("a red cone"), data, atol=1e-6)
    # the generic sampler (SD's path): DDIM with the exact denoiser ends on images of the prompt
    x = Backbone.prior_samples(world, "a red cone", 2, rng.generator(0, rng.Stream.METRICS), scale=1.0, steps=20)
    d = image_distance(data[:, None], x[None]).min(0).values
    assert x.shape == (2, 32, 32, 3) and float(d.max()) < world.precision_threshold


def test_fid_on_stable_diffusion_without_its_weights_fails_before_compute(no_weights):
    from src.api import compose

    sweep = _sweep(no_weights / "sweep", [np.zeros((2, 8, 8, 3), np.uint8)] * 2)
    cfg = compose(["backbone=sd21", "trainer.max_steps=1"])
    for run in sweep.glob("guidance=*"):
        OmegaConf.save(cfg, run / ".hydra" / "config.yaml")
    with pytest.raises(WeightsNotFound, match="hf download stabilityai/stable-diffusion-2-1-base"):
        evaluate_sweep(sweep, ["lpips_d", "fid"], weights="random", log=lambda *_: None)
    assert not (sweep / "evaluation.json").exists()


# -- where the evaluation computes (--device) ----------------------------------------------------
def _evaluate_recording_devices(sweep, device, monkeypatch):
    """evaluate_sweep on ``device`` (random weights, every metric), recording the device of each
    network's parameters, of every tensor any of its modules is given, and of the prior that
    draws FID's samples."""
    from src.backbones.shapes import ShapesWorld
    from src.studies.evaluate import Evaluator

    seen: dict[str, set[str]] = {}
    net = Evaluator.net

    def recording_net(self, name):
        if name not in self._nets:
            module = net(self, name)
            seen.setdefault(name, set()).update(str(p.device) for p in module.parameters())
            for m in module.modules():  # CLIP's towers are called through get_*_features, not forward
                m.register_forward_pre_hook(lambda m, args, kwargs: seen[name].update(
                    str(a.device) for a in [*args, *kwargs.values()] if torch.is_tensor(a)), with_kwargs=True)
        return net(self, name)

    prior = ShapesWorld.prior_samples

    def recording_prior(self, *args, **kwargs):
        seen.setdefault("prior", set()).add(str(self.alphas_cumprod.device))
        return prior(self, *args, **kwargs)

    monkeypatch.setattr(Evaluator, "net", recording_net)
    monkeypatch.setattr(ShapesWorld, "prior_samples", recording_prior)
    out = evaluate_sweep(sweep, parse_metrics("all"), weights="random", log=lambda *_: None, device=device)
    return out, seen


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[
    pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")])])
def test_evaluation_computes_on_the_named_device(tmp_path, monkeypatch, device):
    """LPIPS, CLIP and Inception (their weights and every input) and the prior run on the device;
    on a GPU the numbers are the CPU's (random test weights, float32): LPIPS-D and CLIP-D to 1e-4,
    FID / KID and the per-run metrics to 1e-2, as cuDNN's convolutions use TF32 by default and
    the FID of 8 renders amplifies the features' differences (measured on an H100: FID 6.6e-4
    relative)."""
    g = np.random.default_rng(0)
    frames = [(g.random((4, 32, 32, 3)) * 255).astype(np.uint8) for _ in range(2)]
    out, seen = _evaluate_recording_devices(_sweep(tmp_path / "a", frames), device, monkeypatch)
    want = "cpu" if device == "cpu" else "cuda:0"
    assert seen == {"lpips": {want}, "clip": {want}, "inception": {want}, "prior": {want}}
    assert out["device"] == want and json.loads((tmp_path / "a" / "evaluation.json").read_text())["device"] == want
    if device != "cpu":
        cpu, _ = _evaluate_recording_devices(_sweep(tmp_path / "b", frames), "cpu", monkeypatch)
        for key, rel in (("lpips_d", 1e-4), ("clip_d", 1e-4), ("fid", 1e-2), ("kid", 1e-2)):
            assert out["groups"][0][key] == pytest.approx(cpu["groups"][0][key], rel=rel, abs=1e-6), key
        run = "guidance=sds,seed=0"
        assert out["runs"][run] == pytest.approx(cpu["runs"][run], rel=1e-2, abs=1e-6)


def test_evaluate_script_refuses_an_unknown_or_absent_device_before_anything(tmp_path, capsys):
    from scripts.evaluate import main

    sweep = _sweep(tmp_path / "sweep", [np.zeros((2, 8, 8, 3), np.uint8)] * 2)
    assert main([str(sweep), "--device", "tpu", "--wandb", "disabled"]) == 2
    assert "error: --device='tpu' is invalid: allowed: auto, cpu, cuda, cuda:N" in capsys.readouterr().err
    absent = "cuda:0" if not torch.cuda.is_available() else f"cuda:{torch.cuda.device_count()}"
    assert main([str(sweep), "--device", absent, "--wandb", "disabled"]) == 2
    err = capsys.readouterr().err
    assert f"error: --device='{absent}' is invalid: " in err
    assert ("no CUDA GPU is visible here" if not torch.cuda.is_available() else "this machine has cuda:0 to") in err
    assert not (sweep / "evaluation.json").exists() and not (sweep / "report.md").exists()
