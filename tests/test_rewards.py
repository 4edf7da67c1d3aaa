"""CLIP-family rewards with a tiny CLIP built in-process and loaded through from_pretrained."""

import pytest
import torch
import torch.nn.functional as F

from src.api import compose
from src.metrics.models import TINY_CLIP_MAX_TOKENS, write_tiny_clip
from src.rewards.clip import CLIPReward
from src.trainer import validate
from src.weights import WeightsNotFound


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    return write_tiny_clip(tmp_path_factory.mktemp("clip"))


def test_reward_is_scaled_cosine_and_differentiable(tiny_clip):
    reward = CLIPReward(path=str(tiny_clip), scale=3.0)
    rgb = torch.rand(2, 48, 40, 3, requires_grad=True)
    r = reward(rgb, "a red cube")
    # the same number from the model's own forward on the same preprocessed pixels
    tok = reward.tokenizer(["a red cube"], padding="max_length", max_length=TINY_CLIP_MAX_TOKENS, return_tensors="pt")
    with torch.no_grad():
        out = reward.model(input_ids=tok.input_ids, pixel_values=reward.preprocess(rgb.detach()))
    assert torch.allclose(r.detach(), 3.0 * out.logits_per_image[:, 0], atol=1e-5)
    r.sum().backward()
    assert rgb.grad is not None and rgb.grad.abs().sum() > 0
    assert reward.preprocess(rgb.detach()).shape == (2, 3, 32, 32)  # short side resized, centre crop


def test_reward_decodes_through_the_backbone(tiny_clip):
    class Pixels:  # a pixel-space backbone's decode: (B, 3, H, W) in [-1, 1] -> (B, H, W, 3) in [0, 1]
        def decode(self, x):
            return ((x + 1) * 0.5).permute(0, 2, 3, 1)

    reward = CLIPReward(path=str(tiny_clip), backbone=Pixels())
    x0 = torch.rand(1, 3, 32, 32) * 2 - 1
    direct = CLIPReward(path=str(tiny_clip))(((x0 + 1) * 0.5).permute(0, 2, 3, 1), "a cone")
    assert torch.allclose(reward(x0, "a cone"), direct)
    a, b = reward.text_embedding("a cone"), reward.text_embedding("a cube")
    assert not torch.allclose(a, b) and torch.allclose(a.norm(), torch.tensor(1.0))
    assert F.cosine_similarity(a, a).item() == pytest.approx(1.0)


def test_missing_reward_weights_fail_in_validation(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hub"))
    cfg = compose(["backbone=mog2d", "guidance=sim", "reward=pickscore", "guidance.reward_weight=1"])
    with pytest.raises(WeightsNotFound, match="hf download yuvalkirstain/PickScore_v1") as err:
        validate(cfg)
    assert "reward.path=" in str(err.value)


def test_sim_reward_term_on_stable_diffusion_is_twice_differentiable(tiny_clip, tmp_path):
    """Dive3D-SD: SIM's reward score differentiated through its inputs (grad_through=inputs) is a
    double backward through the UNet, the VAE decoder and CLIP; the fused attention kernels have
    none (it raised on the CPU's; issue 31). The reward changes G, and the step is finite."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from test_sd import write_tiny_sd

    from src.trainer import Trainer

    repo = write_tiny_sd(tmp_path / "sd")
    g0 = {}
    for weight in (0.0, 1.0):
        cfg = compose(["backbone=diffusers", f"backbone.path={repo}", "backbone.dtype=float32",
                       f"backbone.embedding_cache={tmp_path / 'emb'}", "representation=image", "guidance=sim",
                       "reward=clip", f"reward.path={tiny_clip}", "reward.dtype=float32",
                       f"guidance.reward_weight={weight}", "prompt=a red cube", "device=cpu",
                       "trainer.max_steps=2", "trainer.progress=false", "trainer.export=false"])
        tr = Trainer(cfg, tmp_path / str(weight))
        hook = tr.c.guidance.register_forward_hook(lambda m, a, o, w=weight: [g0.setdefault(w, o.grad.clone())] and None)
        logs = tr.train_step(0)
        hook.remove()
        assert all(torch.isfinite(torch.tensor(float(v))) for v in logs.values()), logs
    assert torch.isfinite(g0[1.0]).all() and not torch.allclose(g0[1.0], g0[0.0])
