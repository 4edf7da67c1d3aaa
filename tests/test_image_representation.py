"""representation=image: a learnable image in backbone space."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from src.cameras import ViewBatch
from src.representations.image import Image, backbone_x_shape

PIXEL = SimpleNamespace(space="pixel", resolution=16)
LATENT = SimpleNamespace(space="latent", resolution=64, latent_channels=4,
                         decode=lambda x: torch.zeros(x.shape[0], 64, 64, 3))


def pixel_encode(rgb):  # ShapesWorld.encode
    return rgb.permute(0, 3, 1, 2) * 2.0 - 1.0


def latent_encode(rgb):  # StableDiffusion.encode on a 4-channel (latent) render
    assert rgb.shape[-1] == 4
    return rgb.permute(0, 3, 1, 2)


def vb(index):
    index = torch.as_tensor(index)
    return ViewBatch(index=index, view_idx=torch.zeros_like(index), cam=torch.zeros(len(index), 1))


def test_shapes_from_backbone():
    assert backbone_x_shape(PIXEL) == (3, 16, 16)
    assert backbone_x_shape(PIXEL, 8, 12) == (3, 8, 12)
    assert backbone_x_shape(LATENT) == (4, 8, 8)
    custom = SimpleNamespace(space="pixel", x_shape=lambda h, w: (1, h, w))
    assert backbone_x_shape(custom, 5) == (1, 5, 5)


@pytest.mark.parametrize("bb,encode", [(PIXEL, pixel_encode), (LATENT, latent_encode)])
def test_encode_of_render_is_the_parameter(bb, encode):
    rep = Image(backbone=bb, n_objects=3, init="noise", init_seed=0)
    out = rep.render(vb([2, 0]))
    x = encode(out.rgb)
    torch.testing.assert_close(x, rep.x[[2, 0]].detach(), atol=1e-6, rtol=0)
    torch.testing.assert_close(out.extras["x"], rep.x[[2, 0]])
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
    with pytest.raises(ValueError):
        Image(backbone=PIXEL, init="bogus")


def test_samples_and_export(tmp_path):
    rep = Image(backbone=PIXEL, n_objects=2, init="noise", init_seed=0)
    s = rep.samples(vb([0, 1]))
    assert s.shape == (2, 16, 16, 3) and 0 <= float(s.min()) and float(s.max()) <= 1
    names = sorted(p.name for p in rep.export(tmp_path))
    assert names == ["image_0.png", "image_1.png", "images.png"]
    assert Image.kind == "image"
