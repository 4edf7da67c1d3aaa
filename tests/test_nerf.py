"""representation=nerf on the CPU: grid encoding, compositing, blob, gradients, schedules."""

from __future__ import annotations

import math

import pytest
import torch

from src.clock import run_length
from src.representations import volume
from src.representations.base import RenderOutput
from src.representations.fields import (
    MultiResGrid,
    grid_sample_reference,
    index_add,
    weighted_gather,
)
from tests._nerf_fixtures import TINY_GRID, tiny_nerf, views


def test_dense_levels_match_grid_sample():
    g = MultiResGrid(**TINY_GRID)
    with torch.no_grad():
        g.table.normal_()
    x = torch.rand(500, 3)
    out = g(x).view(500, g.n_levels, g.n_features)
    assert g.n_dense >= 2
    for level in range(g.n_dense):
        ref = grid_sample_reference(g.dense_level(level), x)
        torch.testing.assert_close(out[:, level], ref, atol=1e-5, rtol=1e-5)


def test_weighted_gather_backward_matches_autograd_reference():
    table = torch.randn(50, 3, dtype=torch.float64, requires_grad=True)
    idx = torch.randint(50, (40, 8))
    w = torch.rand(40, 8, dtype=torch.float64)
    g = torch.randn(40, 3, dtype=torch.float64)
    (weighted_gather(table, idx, w) * g).sum().backward()
    fast = table.grad.clone()
    table.grad = None
    ((w[..., None] * table[idx]).sum(1) * g).sum().backward()
    torch.testing.assert_close(fast, table.grad)


@pytest.mark.parametrize("chunk", [1, 7, 160, 1000])
def test_chunked_index_add_equals_one_call(chunk):
    """The deterministic CUDA backward's chunks (src/representations/fields.py) add what one call adds."""
    g = torch.Generator().manual_seed(0)
    index = torch.randint(30, (160,), generator=g)
    src = torch.randn(160, 2, generator=g, dtype=torch.float64)
    one = torch.zeros(30, 2, dtype=torch.float64).index_add_(0, index, src)
    torch.testing.assert_close(index_add(torch.zeros(30, 2, dtype=torch.float64), index, src, chunk), one)
    assert index_add(torch.zeros(3, 2), index[:0], src[:0], chunk).abs().sum() == 0  # no entries


# Runs in Triton's interpreter (TRITON_INTERPRET=1, numpy on the CPU): the fused kernels of
# representation.fast_field against the pure-torch lookup, in a subprocess because the variable is
# read when the kernels are defined. The CUDA run of the same comparison: tests/test_nerf_cuda.py.
FAST_LOOKUP_CHECK = """
import torch
from src.representations import hashgrid_triton as hg
from src.representations.fields import MultiResGrid
torch.manual_seed(0)
grid = MultiResGrid(n_levels=6, n_features=2, log2_hashmap_size=12, base_resolution=8, per_level_scale=1.6)
with torch.no_grad():
    grid.table.normal_(0.0, 0.3)
x = torch.rand(700, 3) * 1.2 - 0.1
x[:3] = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.5, 0.25, 1.0]])
up = torch.randn(700, grid.output_dim)
fast, ref = hg.encode(grid, x), grid(x)
torch.testing.assert_close(fast, ref, rtol=1e-6, atol=1e-6)
(g_fast,) = torch.autograd.grad((hg.encode(grid, x) * up).sum(), grid.table)
(g_ref,) = torch.autograd.grad((ref * up).sum(), grid.table)
torch.testing.assert_close(g_fast, g_ref, rtol=1e-5, atol=1e-6)
up[5, 3] = float("nan")
(g_nan,) = torch.autograd.grad((hg.encode(grid, x) * up).sum(), grid.table)
assert not torch.isfinite(g_nan).all()  # a non-finite gradient stays visible to the trainer
print("ok", grid.n_dense, int(grid.hashed.sum()))
"""


def test_fast_lookup_kernels_equal_the_reference_in_the_interpreter():
    import os
    import subprocess
    import sys
    from pathlib import Path

    pytest.importorskip("triton")
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(root)}
    out = subprocess.run([sys.executable, "-c", FAST_LOOKUP_CHECK], capture_output=True, text=True,
                         env=env, cwd=root, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["ok", "2", "4"]  # dense and hashed levels both checked


def test_hashed_levels_in_range_and_continuous():
    g = MultiResGrid(n_levels=3, log2_hashmap_size=8, base_resolution=16, per_level_scale=1.5)
    assert bool(g.hashed.all())
    x = torch.rand(1000, 3)
    y = g(x)
    assert y.shape == (1000, 6) and torch.isfinite(y).all()
    # trilinear interpolation is continuous: a tiny move changes the features a little
    d = (g(x + 1e-6) - y).abs().max()
    assert d < 1e-6


def test_int32_corner_indices_equal_instant_ngps_int64_hash():
    """The lookup indexes in int32 where the rows fit (fields.MultiResGrid.index_dtype): the hash
    keeps the low log2_hashmap_size bits of each coordinate x prime product, which the prime's
    low bits decide, so features and gradients equal the int64 hash bit for bit (corners at the
    box's faces included); a grid too large for int32 indexes in int64."""
    g32 = MultiResGrid(n_levels=6, log2_hashmap_size=12, base_resolution=8, per_level_scale=1.6)
    assert g32.index_dtype == torch.int32 and 0 < g32.n_dense < 6  # dense and hashed levels
    g64 = MultiResGrid(n_levels=6, log2_hashmap_size=12, base_resolution=8, per_level_scale=1.6)
    g64.load_state_dict(g32.state_dict())
    g64.index_dtype = torch.long
    x = torch.cat([torch.rand(2000, 3), torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [1.0, 0.0, 0.5]])])
    y32, y64 = g32(x), g64(x)
    assert torch.equal(y32, y64)
    y32.square().sum().backward()
    y64.square().sum().backward()
    assert torch.equal(g32.table.grad, g64.table.grad)
    big = MultiResGrid(n_levels=16, log2_hashmap_size=19, base_resolution=16, per_level_scale=1.447269)
    assert big.index_dtype == torch.long  # threestudio's grid: coordinate x (prime mod 2^19) can pass 2^31


def test_render_shapes_dtypes_and_ranges():
    nerf = tiny_nerf()
    out = nerf.render(views(2, res=8))
    assert isinstance(out, RenderOutput)
    assert out.rgb.shape == (2, 8, 8, 3) and out.opacity.shape == (2, 8, 8, 1) and out.depth.shape == (2, 8, 8, 1)
    assert out.rgb.dtype == torch.float32
    o, c = out.opacity.detach(), out.rgb.detach()
    assert 0.0 <= float(o.min()) and float(o.max()) <= 1.0 + 1e-6
    assert 0.0 <= float(c.min()) and float(c.max()) <= 1.0 + 1e-6
    nerf64 = tiny_nerf().double()
    assert nerf64.render(views(1, res=4)).rgb.dtype == torch.float64  # float32 cameras are cast


def test_blob_init_opaque_centre_clear_edges():
    nerf = tiny_nerf().eval()
    with torch.no_grad():
        out = nerf.render(views(1, res=16))
    o = out.opacity[0, ..., 0]
    assert o[7:9, 7:9].min() > 0.9  # the Magic3D blob (radius 0.5) covers the centre
    assert o[0, 0] < 0.05 and o[-1, -1] < 0.05
    # depth at the centre: inside the soft blob (|x| < 0.5), in front of the origin
    assert 1.5 < float(out.depth[0, 8, 8, 0]) < 2.0


def test_dense_composite_matches_hand_written_reference():
    g = torch.Generator().manual_seed(0)
    R, S = 7, 11
    t0 = torch.rand(R, S, generator=g).cumsum(1)
    t1 = t0 + 0.3 * torch.rand(R, S, generator=g)
    sigma = 3 * torch.rand(R, S, generator=g)
    rgbs = torch.rand(R, S, 3, generator=g)
    rgb, opacity, _, w = volume.composite(t0, t1, sigma, rgbs)
    rgb_ref, op_ref = volume.composite_reference(t0, t1, sigma, rgbs)
    torch.testing.assert_close(rgb, rgb_ref, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(opacity, op_ref, atol=1e-6, rtol=1e-5)


def test_render_equals_reference_compositing_end_to_end():
    """A whole eval render equals the hand-written compositing of the same samples + background."""
    nerf = tiny_nerf().eval()
    v = views(1, res=6)
    out = nerf.render(v)
    from src.cameras_orbit import get_rays

    o, d = (t.reshape(-1, 3) for t in get_rays(v))
    t_near, t_far, hit = volume.ray_aabb(o, d, nerf.radius)
    t_far = torch.where(hit, t_far, t_near)
    t0, t1 = volume.dense_intervals(t_near, t_far, nerf.n_samples, stratified=False)
    pts = o[:, None] + d[:, None] * (0.5 * (t0 + t1))[..., None]
    with torch.no_grad():
        sigma, rgb = nerf.fields[0](pts.reshape(-1, 3))
        c, a = volume.composite_reference(t0, t1, sigma.view(t0.shape), rgb.view(*t0.shape, 3))
        c = c + nerf.background(d) * (1 - a)
    torch.testing.assert_close(out.rgb.reshape(-1, 3).detach(), c, atol=1e-5, rtol=1e-4)


def test_gradients_reach_grid_mlp_and_background():
    nerf = tiny_nerf()
    out = nerf.render(views(1, res=8))
    loss = out.rgb.sum() + sum(nerf.regularizers(out, 0).values(), torch.zeros(()))
    loss.backward()
    f = nerf.fields[0]
    assert f.encoding.table.grad is not None and f.encoding.table.grad.abs().sum() > 0
    assert f.net[0].weight.grad.abs().sum() > 0
    assert nerf.background.logit.grad.abs().sum() > 0
    names = {g["name"] for g in nerf.param_groups()}
    assert names == {"grid", "net", "background"}


@pytest.mark.parametrize("n_objects", [1, 2])
def test_checkpointed_chunks_give_the_same_image_and_gradients(n_objects):
    """checkpoint_chunks: recomputing each chunk in backward changes memory, not the result.
    Stratified samples are drawn before the checkpoint, so the recomputation is exact; the
    gradients could differ only in the order the chunks' contributions are summed (measured: 0)."""
    out, grads = {}, {}
    v = views(2, res=8)
    v.index = torch.arange(2) % n_objects
    for ckpt in (False, True):
        nerf = tiny_nerf(chunk_rays=40, checkpoint_chunks=ckpt, n_objects=n_objects)  # 128 rays: 4 chunks
        nerf.set_generator(torch.Generator().manual_seed(3))  # training mode: stratified jitter
        r = nerf.render(v)
        w = torch.linspace(-1.0, 1.0, r.rgb.numel()).view_as(r.rgb)
        ((w * r.rgb).sum() + r.opacity.square().sum() + r.depth.sum()).backward()
        out[ckpt] = (r.rgb.detach(), r.opacity.detach(), r.depth.detach())
        grads[ckpt] = {n: p.grad.clone() for n, p in nerf.named_parameters() if p.grad is not None}
    for a, b in zip(out[False], out[True]):
        assert torch.equal(a, b)
    assert grads[False].keys() == grads[True].keys() and len(grads[True]) >= 5
    for n, g in grads[False].items():
        torch.testing.assert_close(grads[True][n], g, rtol=1e-5, atol=1e-7, msg=n)


def test_auto_checkpointing_from_the_ray_count(monkeypatch):
    """checkpoint_chunks=auto checkpoints a render of AUTO_CHECKPOINT_RAYS rays or more only (a
    64 -> 512 px schedule: its 512 px steps); same image either way."""
    import src.representations.nerf as nerf_mod

    monkeypatch.setattr(nerf_mod, "AUTO_CHECKPOINT_RAYS", 8 * 8)
    calls = []
    real = torch.utils.checkpoint.checkpoint
    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", lambda *a, **k: calls.append(1) or real(*a, **k))
    nerf = tiny_nerf(checkpoint_chunks="auto", chunk_rays=1000)
    assert [nerf.checkpointed(n) for n in (63, 64)] == [False, True]
    nerf.render(views(1, res=7))  # 49 rays
    torch.manual_seed(3)  # the stratified jitter
    big = nerf.render(views(1, res=8))  # 64 rays
    assert len(calls) == 1
    monkeypatch.setattr(nerf_mod, "AUTO_CHECKPOINT_RAYS", 10**9)
    torch.manual_seed(3)
    plain = nerf.render(views(1, res=8))
    assert len(calls) == 1
    torch.testing.assert_close(plain.rgb, big.rgb, rtol=0, atol=0)


def test_regularizers_weighted_and_differentiable():
    nerf = tiny_nerf(lambda_sparsity=2.0, lambda_opaque=0.5)
    out = nerf.render(views(1, res=8))
    regs = nerf.regularizers(out, 0)
    assert set(regs) == {"sparsity", "opaque"}
    o = out.opacity
    torch.testing.assert_close(regs["sparsity"], 2.0 * (o**2 + 0.01).sqrt().mean())
    assert all(r.requires_grad and r > 0 for r in regs.values())
    assert tiny_nerf().regularizers(out, 0) == {}


def test_stratified_jitter_differs_and_is_seedable():
    nerf = tiny_nerf()  # training mode: stratified
    v = views(1, res=6)
    nerf.set_generator(torch.Generator().manual_seed(1))
    a = nerf.render(v).rgb
    nerf.set_generator(torch.Generator().manual_seed(1))
    b = nerf.render(v).rgb
    c = nerf.render(v).rgb
    torch.testing.assert_close(a, b)
    assert not torch.equal(a, c)


def test_resolution_schedule():
    nerf = tiny_nerf(resolution_schedule={"resolutions": [4, 8], "milestones": [0.5]}, run_length=run_length(10))
    v = views(1, res=6)
    nerf.update_step(0)
    assert nerf.render(v).rgb.shape[1:3] == (4, 4)
    nerf.update_step(5)
    assert nerf.render(v).rgb.shape[1:3] == (8, 8)
    assert nerf.samples(v).shape[1:3] == (6, 6)  # metrics: the cameras' own resolution
    assert nerf.training
    nerf.eval()  # validation / export render at the cameras' own resolution
    assert nerf.render(v).rgb.shape[1:3] == (6, 6)
    with pytest.raises(ValueError):
        tiny_nerf(resolution_schedule={"resolutions": [4, 8], "milestones": []}, run_length=run_length(10)).update_step(0)


def test_n_objects_select_fields():
    nerf = tiny_nerf(n_objects=2).eval()
    with torch.no_grad():
        nerf.fields[1].net[-1].bias[1:] = -5.0  # object 1 is dark
    v = views(2, res=6)
    v.index = torch.tensor([0, 1])
    rgb = nerf.render(v).rgb
    c = rgb[:, 3, 3]
    assert c[1].max() < 0.1 < c[0].max()
    assert len(list(nerf.state_dict())) > 0


def test_fixed_step_intervals_match_marcher_emulation():
    """The dense twin of nerfacc's grid marcher (fully occupied, cone angle 0):
    emulate traverse_grids' loop (grid.cu) in Python for a few rays."""
    step, near = 0.07, 0.3
    t_min = torch.tensor([0.2, 0.95, 1.31, 2.0])
    t_max = torch.tensor([1.0, 2.5, 1.32, 1.0])  # the last ray misses
    t0, t1, valid = volume.fixed_step_intervals(t_min.clamp_min(near), t_max, step, 64, near)
    for r in range(4):
        lo, hi = max(float(t_min[r]), near), float(t_max[r])
        t, starts = near, []
        while t + 0.5 * step < lo:
            t += step
        while t + 0.5 * step < hi:
            starts.append(t)
            t += step
        got = t0[r][valid[r]].tolist()
        assert len(got) == len(starts)
        assert all(math.isclose(a, b, abs_tol=1e-5) for a, b in zip(got, starts))
    assert torch.all(t1[~valid] == t0[~valid])  # padding is zero-length


def test_occgrid_renderer_needs_cuda():
    nerf = tiny_nerf(renderer="occgrid")
    with pytest.raises(RuntimeError, match="CUDA"):
        nerf.render(views(1, res=4))
