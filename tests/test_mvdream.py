"""MVDream (src/backbones/mvdream.py) offline: a tiny SD 2.1-shaped repository and a tiny state dict
in the official checkpoint's LDM layout, built in-process; conversion, the multi-view UNet against
plain SD's and a reference attention, psi on it, every method through the trainer."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"  # no test may touch the network

from src.backbones.mvdream import (  # noqa: E402
    CAMERA_KEYS,
    LDM_UNET_PREFIX,
    MVDREAM_FILE,
    MultiViewAttnProcessor,
    MVDream,
    normalize_camera,
)
from src.cameras_orbit import OrbitSampler  # noqa: E402
from src.weights import WeightsNotFound  # noqa: E402
from tests.helpers import one_thread, two_finite_steps  # noqa: F401  (one_thread: autouse fixture)
from tests.test_sd import write_tiny_sd  # noqa: E402

# the tiny UNet of tests/test_sd.py (channels (32, 64), one ResNet per level) with its attention on
# level 1 instead of 0: MVDream's latents are 32 x 32 whatever the renders' size, so attention on
# level 0 would attend over 4 x 1024 tokens a set, most of these tests' time, for the same code
TINY = dict(model_channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(1,), context_dim=32)
DOWN_BLOCKS, UP_BLOCKS = ("DownBlock2D", "CrossAttnDownBlock2D"), ("CrossAttnUpBlock2D", "UpBlock2D")


def ldm_unet_shapes(model_channels: int, channel_mult: tuple[int, ...], num_res_blocks: int,
                    attention_levels: tuple[int, ...], context_dim: int, camera_dim: int = 16,
                    in_channels: int = 4, out_channels: int = 4) -> dict[str, tuple[int, ...]]:
    """Every parameter name and shape of MVDream's ``MultiViewUNetModel`` (mvdream/ldm/modules/
    diffusionmodules/openaimodel.py, sd-v2-base.yaml's options: spatial transformers with linear
    projections, depth 1, no resblock up/down), written from its constructor, for a given size."""
    S: dict[str, tuple[int, ...]] = {}
    ted = 4 * model_channels  # time_embed_dim

    def lin(name, i, o, bias=True):
        S[f"{name}.weight"] = (o, i)
        if bias:
            S[f"{name}.bias"] = (o,)

    def conv(name, i, o, k=3):
        S[f"{name}.weight"], S[f"{name}.bias"] = (o, i, k, k), (o,)

    def norm(name, c):
        S[f"{name}.weight"], S[f"{name}.bias"] = (c,), (c,)

    def resblock(name, i, o):
        norm(f"{name}.in_layers.0", i)
        conv(f"{name}.in_layers.2", i, o)
        lin(f"{name}.emb_layers.1", ted, o)
        norm(f"{name}.out_layers.0", o)
        conv(f"{name}.out_layers.3", o, o)
        if i != o:
            conv(f"{name}.skip_connection", i, o, k=1)

    def transformer(name, c):  # SpatialTransformer3D(use_linear=True) with one BasicTransformerBlock3D
        norm(f"{name}.norm", c)
        lin(f"{name}.proj_in", c, c)
        b = f"{name}.transformer_blocks.0"
        for attn, kv in (("attn1", c), ("attn2", context_dim)):
            lin(f"{b}.{attn}.to_q", c, c, bias=False)
            lin(f"{b}.{attn}.to_k", kv, c, bias=False)
            lin(f"{b}.{attn}.to_v", kv, c, bias=False)
            lin(f"{b}.{attn}.to_out.0", c, c)
        lin(f"{b}.ff.net.0.proj", c, 2 * 4 * c)  # GEGLU to 4 c
        lin(f"{b}.ff.net.2", 4 * c, c)
        for n in (1, 2, 3):
            norm(f"{b}.norm{n}", c)
        lin(f"{name}.proj_out", c, c)

    lin("time_embed.0", model_channels, ted)
    lin("time_embed.2", ted, ted)
    lin("camera_embed.0", camera_dim, ted)
    lin("camera_embed.2", ted, ted)
    conv("input_blocks.0.0", in_channels, model_channels)
    chans, ch, i = [model_channels], model_channels, 1
    for level, mult in enumerate(channel_mult):
        for _ in range(num_res_blocks):
            resblock(f"input_blocks.{i}.0", ch, mult * model_channels)
            ch = mult * model_channels
            if level in attention_levels:
                transformer(f"input_blocks.{i}.1", ch)
            chans.append(ch)
            i += 1
        if level != len(channel_mult) - 1:
            conv(f"input_blocks.{i}.0.op", ch, ch)
            chans.append(ch)
            i += 1
    resblock("middle_block.0", ch, ch)
    transformer("middle_block.1", ch)
    resblock("middle_block.2", ch, ch)
    o = 0
    for level, mult in reversed(list(enumerate(channel_mult))):
        for j in range(num_res_blocks + 1):
            resblock(f"output_blocks.{o}.0", ch + chans.pop(), mult * model_channels)
            ch = mult * model_channels
            k = 1
            if level in attention_levels:
                transformer(f"output_blocks.{o}.1", ch)
                k = 2
            if level and j == num_res_blocks:
                conv(f"output_blocks.{o}.{k}.conv", ch, ch)
            o += 1
    norm("out.0", ch)
    conv("out.2", model_channels, out_channels)
    return S


def official_state_dict(seed: int = 0, **size) -> dict[str, torch.Tensor]:
    """A random state dict in the official checkpoint's layout (UNet under model.diffusion_model.,
    plus VAE / text encoder keys the conversion must ignore)."""
    g = torch.Generator().manual_seed(seed)
    state = {LDM_UNET_PREFIX + k: torch.randn(s, generator=g) * 0.05
             for k, s in ldm_unet_shapes(**{**TINY, **size}).items()}
    state["first_stage_model.encoder.conv_in.weight"] = torch.zeros(4, 3, 3, 3)
    state["cond_stage_model.model.positional_embedding"] = torch.zeros(77, 32)
    return state


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """A tiny SD 2.1-shaped repository (linear projections in the transformers, as SD 2.x), its
    attention on level 1 (TINY). The random weights of the folder are never used: MVDream loads
    the UNet from the checkpoint."""
    root = write_tiny_sd(tmp_path_factory.mktemp("tiny-sd21"))
    cfg_path = root / "unet" / "config.json"
    cfg_path.write_text(json.dumps({**json.loads(cfg_path.read_text()), "use_linear_projection": True,
                                    "down_block_types": DOWN_BLOCKS, "up_block_types": UP_BLOCKS}))
    return root


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> tuple[Path, dict]:
    state = official_state_dict()
    path = tmp_path_factory.mktemp("mvdream") / MVDREAM_FILE
    torch.save(state, path)
    return path, state




def make(repo, checkpoint, **kw) -> MVDream:
    return MVDream(path=str(repo), checkpoint=str(checkpoint[0]), dtype="float32", embedding_cache=None, **kw)


def test_official_layout_converts_with_every_key_used(repo, checkpoint):
    """The official layout converts (diffusers' convert_ldm_unet_checkpoint + the camera MLP) and
    loads strictly: no missing, no unexpected key; every UNet tensor of the file lands somewhere,
    unchanged, the camera MLP in the projection class embedding."""
    bb = make(repo, checkpoint)
    unet, state = bb.unet, checkpoint[1]
    params = dict(unet.named_parameters())
    ldm = {k: v for k, v in state.items() if k.startswith(LDM_UNET_PREFIX)}
    assert len(params) == len(ldm)
    used = sorted(float(v.double().sum()) for v in params.values())
    assert used == pytest.approx(sorted(float(v.double().sum()) for v in ldm.values()), rel=0, abs=1e-9)
    for new, old in CAMERA_KEYS.items():
        assert torch.equal(params[new], ldm[LDM_UNET_PREFIX + old])
    assert torch.equal(params["time_embedding.linear_1.weight"], ldm[LDM_UNET_PREFIX + "time_embed.0.weight"])
    assert unet.config.class_embed_type == "projection" and unet.config.projection_class_embeddings_input_dim == 16
    assert bb.resolution == 32 * 2  # MVDream's sample size 32 x the tiny VAE's 2 (SD's VAE: 256 px)
    assert all(isinstance(p, MultiViewAttnProcessor) for p in unet.attn_processors.values())


def test_a_checkpoint_without_the_camera_mlp_is_refused(repo, tmp_path):
    state = {k: v for k, v in official_state_dict().items() if "camera_embed" not in k}
    torch.save(state, tmp_path / "sd.pt")
    with pytest.raises(ValueError, match="not an MVDream checkpoint: no camera MLP"):
        MVDream(path=str(repo), checkpoint=str(tmp_path / "sd.pt"), dtype="float32", embedding_cache=None)


def test_missing_checkpoint_fails_naming_the_file_and_how_to_fetch_it(repo, tmp_path, monkeypatch):
    """Before anything is built: the configured file, or the Hugging Face cache of MVDream/MVDream."""
    from src.api import compose
    from src.build import validate
    from src.checks import ConfigError

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    for checkpoint, where in ((tmp_path / "nowhere.pt", "no file"), (None, "models--MVDream--MVDream")):
        cfg = compose(["backbone=mvdream", f"backbone.path={repo}", "camera=multiview", "representation=nerf",
                       f"backbone.checkpoint={'null' if checkpoint is None else checkpoint}", "prompt=a lion"])
        with pytest.raises((WeightsNotFound, ConfigError)) as err:
            validate(cfg)
        msg = str(err.value)
        assert where in msg and f"hf download MVDream/MVDream {MVDREAM_FILE}" in msg, msg


def test_one_view_with_the_camera_mlp_at_zero_is_plain_sd(repo, checkpoint):
    """V = 1 and the camera MLP's output at zero: MVDream's UNet is SD's UNet with the same weights
    (the multi-view processor is diffusers' plain one for a single view)."""
    from diffusers import UNet2DConditionModel

    bb = make(repo, checkpoint, views_per_set=1)
    mv = bb.unet
    torch.nn.init.zeros_(mv.class_embedding.linear_2.weight)
    torch.nn.init.zeros_(mv.class_embedding.linear_2.bias)
    cfg = {k: v for k, v in dict(mv.config).items() if not k.startswith("_")}
    cfg.update(class_embed_type=None, projection_class_embeddings_input_dim=None)
    sd = UNet2DConditionModel.from_config(cfg)
    state = {k: v for k, v in mv.state_dict().items() if not k.startswith("class_embedding.")}
    assert not sd.load_state_dict(state, strict=True).missing_keys
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(3, 4, 8, 8, generator=g), torch.tensor([10, 500, 990])
    text = torch.randn(3, 16, 32, generator=g)
    cams = normalize_camera(OrbitSampler(batch_size=3).sample(0, g).c2w)
    emb = bb.with_camera(torch.cat([text, torch.zeros(3, 1, 32)], 1), cams)
    with torch.no_grad():
        torch.testing.assert_close(bb.predict_eps(x, t, emb), sd(x, t, encoder_hidden_states=text).sample,
                                   rtol=1e-5, atol=1e-5)


def _reference_attention(attn, h: torch.Tensor, V: int) -> torch.Tensor:
    """MVDream's attn1 written out: tokens of V views as one sequence, softmax(q k^T / sqrt(d)) v."""
    N, L, C = h.shape
    x = h.reshape(N // V, V * L, C)
    q, k, v = attn.to_q(x), attn.to_k(x), attn.to_v(x)
    heads = attn.heads
    split = lambda z: z.reshape(z.shape[0], -1, heads, C // heads).transpose(1, 2)  # noqa: E731
    w = torch.softmax(split(q) @ split(k).transpose(-1, -2) / (C // heads) ** 0.5, -1)
    out = (w @ split(v)).transpose(1, 2).reshape(N // V, V * L, C)
    return attn.to_out[0](out).reshape(N, L, C)


def test_multiview_self_attention_against_the_reference(repo, checkpoint):
    """attn1 attends over all V views' tokens (the reference), cross-attention stays per view, a
    last shorter set attends over its own views; the UNet couples the views of a set only."""
    bb = make(repo, checkpoint, views_per_set=2)
    block = bb.unet.down_blocks[1].attentions[0].transformer_blocks[0]
    g = torch.Generator().manual_seed(1)
    h = torch.randn(5, 16, 64, generator=g)
    with torch.no_grad():
        got = block.attn1.processor(block.attn1, h, num_views=2)
        want = torch.cat([_reference_attention(block.attn1, h[:4], 2), _reference_attention(block.attn1, h[4:], 1)])
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        ctx = torch.randn(5, 16, 32, generator=g)
        cross = block.attn2.processor(block.attn2, h, ctx, num_views=2)
        torch.testing.assert_close(cross[:1], block.attn2.processor(block.attn2, h[:1], ctx[:1], num_views=1))
        # through the UNet: changing view 1 of set 0 changes view 0's prediction, not set 1's
        x, t = torch.randn(4, 4, 8, 8, generator=g), torch.full((4,), 400)
        emb = bb.embed("a lion").expand(4, -1, -1)
        e = bb.predict_eps(x, t, emb)
        x2 = x.clone()
        x2[1] += 1.0
        e2 = bb.predict_eps(x2, t, emb)
        assert (e2[0] - e[0]).abs().max() > 0 and torch.equal(e2[2:], e[2:])


def test_camera_row_and_normalization(repo, checkpoint):
    """The camera row carries MVDream's normalized c2w (position on the unit sphere), for the null
    prompt too; psi's rows get their own camera (with_psi_camera)."""
    bb = make(repo, checkpoint)
    views = OrbitSampler(batch_size=4, views_per_set=4, distance_range=(2.0, 2.0)).sample(0, torch.Generator().manual_seed(0))
    cam = normalize_camera(views.c2w)
    torch.testing.assert_close(cam.view(4, 4, 4)[:, :3, 3].norm(dim=1), torch.ones(4))
    torch.testing.assert_close(cam.view(4, 4, 4)[:, :3, :3], views.c2w[:, :3, :3])
    cond = bb.conditioning("a lion")
    emb = bb.condition_on_views(cond.select(views.view_idx), views)
    null = bb.condition_on_views(cond.null(4), views, null=True)
    for e in (emb, null):
        assert e.shape == (4, 17, 32) and torch.equal(e[:, -1, :16], cam) and not e[:, -1, 16:].any()
    assert torch.equal(emb[:, :-1], cond.select(views.view_idx)[:, :-1])
    rows = torch.tensor([0.0, 1.0, 0.0, 1.0])
    mixed = bb.with_psi_camera(emb, torch.zeros(4, 16), rows)
    assert torch.equal(mixed[0], emb[0]) and not mixed[1, -1].any()


def test_psi_starts_as_the_prior_at_every_camera(repo, checkpoint):
    """The LoRA psi on MVDream: at step 0 e_psi(x_t; y, c) = e(x_t; y, c) for posed views (its native
    camera MLP sees the view's camera), eager and in the fused call."""
    from src.guidance.vsd import VSD
    from src.scoremodels.lora import LoRAScore
    from tests.helpers import make_guidance

    bb = make(repo, checkpoint)
    views = OrbitSampler(batch_size=4, views_per_set=4).sample(0, torch.Generator().manual_seed(0))

    class Rep:
        cam_dim = 16

    psi = lambda backbone, representation: LoRAScore(backbone, Rep())  # noqa: E731
    vsd = make_guidance(VSD, bb, t=500, prompt="a lion", score_model=psi, scale=1.0)
    emb, _ = vsd.text(views)
    g = torch.Generator().manual_seed(2)
    x_t, t = torch.randn(4, 4, 8, 8, generator=g), torch.full((4,), 500)
    with torch.no_grad():
        prior = bb.predict_eps(x_t, t, emb)
        torch.testing.assert_close(vsd.psi_eps(x_t, t, views.cam), prior, rtol=1e-5, atol=1e-5)
        e_c, _, (e_psi,) = bb.eps_pair_with_psi(x_t, t, emb, None, vsd.psi, vsd.psi_text(4), [views.cam])
        torch.testing.assert_close(e_c, prior, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(e_psi, prior, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", __import__("src.configs", fromlist=["x"]).guidance_names())
def test_each_method_runs_on_a_tiny_mvdream(method, repo, checkpoint, tmp_path):
    """Every estimator a few trainer steps on camera=multiview (a NeRF at 16 px): finite, psi (VSD,
    ESD, SIM) the LoRA on MVDream's own UNet, fitted (its loss logged)."""
    from src.api import compose
    from src.trainer import Trainer

    cfg = compose([
        "backbone=mvdream", f"backbone.path={repo}", f"backbone.checkpoint={checkpoint[0]}",
        "backbone.dtype=float32", "backbone.embedding_cache=null", "representation=nerf",
        "camera=multiview", "camera.height=16", "camera.width=16", f"guidance={method}",
        "prompt=a ceramic lion", "device=cpu", "trainer.max_steps=2", "trainer.progress=false",
        "trainer.export=false",
    ])
    assert cfg.backbone.views_per_set == 4
    trainer = Trainer(cfg, tmp_path / "run")
    logs = two_finite_steps(trainer)
    if trainer.c.guidance.psi is not None:
        assert trainer.c.guidance.psi.backbone.unet is trainer.c.backbone.unet and "psi_loss" in logs


def test_a_converted_unet_folder_loads_as_the_checkpoint(repo, checkpoint, tmp_path):
    """backbone.checkpoint may name a diffusers UNet folder (a converted copy; the GPU benchmark's
    random one): the same predictions; a plain SD UNet folder (no camera MLP) is refused."""
    bb = make(repo, checkpoint)
    bb.unet.save_pretrained(tmp_path / "converted")
    again = MVDream(path=str(repo), checkpoint=str(tmp_path / "converted"), dtype="float32", embedding_cache=None)
    g = torch.Generator().manual_seed(3)
    x, t = torch.randn(4, 4, 8, 8, generator=g), torch.full((4,), 300)
    views = OrbitSampler(batch_size=4, views_per_set=4).sample(0, g)
    emb = bb.condition_on_views(bb.embed("a lion").expand(4, -1, -1), views)
    with torch.no_grad():
        torch.testing.assert_close(again.predict_eps(x, t, emb), bb.predict_eps(x, t, emb), rtol=0, atol=0)
    with pytest.raises(ValueError, match="is not an MVDream UNet: no camera MLP"):
        MVDream(path=str(repo), checkpoint=str(repo / "unet"), dtype="float32", embedding_cache=None)
