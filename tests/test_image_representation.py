"""representation=image: a learnable image in backbone space."""

from __future__ import annotations

import pytest
import torch

from src.backbones.base import Backbone
from src.cameras import ViewBatch
from src.checks import ConfigError
from src.representations.image import Image


class Pixel(Backbone):  # a 16 px pixel prior: x_shape from the base class
    space, resolution = "pixel", 16

    def encode(self, rgb):  # ShapesWorld.encode
        return rgb.permute(0, 3, 1, 2) * 2.0 - 1.0


class Latent(Backbone):  # an SD-like latent prior: 4 channels at 1/8 of 64 px
    space, resolution = "latent", 64

    def x_shape(self, height=None, width=None):
        H = int(height or self.resolution)
        return (4, H // 8, int(width or H) // 8)

    def decode(self, x):
        return torch.zeros(x.shape[0], 64, 64, 3)


PIXEL, LATENT = Pixel(), Latent()


def vb(index):
    index = torch.as_tensor(index)
    return ViewBatch(index=index, view_idx=torch.zeros_like(index), cam=torch.zeros(len(index), 1))


def test_shapes_from_backbone():
    assert Image(backbone=PIXEL).x.shape == (1, 3, 16, 16)
    assert Image(backbone=PIXEL, height=8, width=12).x.shape == (1, 3, 8, 12)
    assert Image(backbone=LATENT, n_objects=2).x.shape == (2, 4, 8, 8)


@pytest.mark.parametrize("bb", [PIXEL, LATENT])
def test_render_is_the_parameter_in_backbone_space(bb):
    rep = Image(backbone=bb, n_objects=3, init="noise", init_seed=0)
    out = rep.render(vb([2, 0]))
    x = out.x  # what the trainer uses instead of encode
    torch.testing.assert_close(x, rep.x[[2, 0]], atol=0, rtol=0)
    if bb.space == "pixel":  # the picture encodes back to x exactly
        torch.testing.assert_close(bb.encode(out.rgb), x.detach(), atol=1e-6, rtol=0)
    else:
        assert out.rgb is None  # a latent has no picture until decoded
    # d x / d param = identity: one SGD step of size lr moves x by exactly -lr * G
    G = torch.randn_like(x)
    (0.5 * ((x - (x - G).detach()) ** 2).flatten(1).sum(1).sum()).backward()
    expect = torch.zeros_like(rep.x)
    expect[[2, 0]] = G
    torch.testing.assert_close(rep.x.grad, expect, atol=1e-6, rtol=1e-6)


def test_inits():
    assert torch.all(Image(backbone=PIXEL).x == 0)
    c = Image(backbone=PIXEL, init="constant", init_value=[0.1, 0.2, 0.3]).x
    assert torch.allclose(c[0, :, 0, 0], torch.tensor([0.1, 0.2, 0.3]))
    a = Image(backbone=PIXEL, init="noise", init_seed=1).x.detach()
    b = Image(backbone=PIXEL, init="noise", init_seed=1).x
    torch.testing.assert_close(a, b)
    assert 0.8 < float(a.std()) < 1.2
    with pytest.raises(ConfigError, match=r"representation.init='bogus' is invalid: allowed: zeros, noise"):
        Image.validate_config({"init": "bogus", "n_objects": 1, "lr": 0.1}, "representation")


def test_samples_and_export(tmp_path):
    rep = Image(backbone=PIXEL, n_objects=2, init="noise", init_seed=0)
    s = rep.samples(vb([0, 1]))
    assert s.shape == (2, 16, 16, 3) and 0 <= float(s.min()) and float(s.max()) <= 1
    names = sorted(p.name for p in rep.export(tmp_path))
    assert names == ["image_0.png", "image_1.png", "images.png"]
    assert Image.kind == "image"
