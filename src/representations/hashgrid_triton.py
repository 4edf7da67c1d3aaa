"""The multi-resolution grid lookup of ``fields.MultiResGrid`` as two fused Triton kernels
(``representation.fast_field``, CUDA only; issue 31).

The pure-torch encoding (fields.py) materializes, per point and level, the 8 corner indices
(int64) and weights before one gather: ~800 bytes a sample between the kernels and in autograd's
saved tensors (a 512 px NeRF render marches tens of millions of samples). Here one program per
(block of points, level) computes the corners, the hash, the trilinear weights and the weighted
sum in registers; autograd keeps only the points. Same function: the corner indices are
Instant-NGP's hash (or the row-major index of a dense level) exactly as ``MultiResGrid`` forms
them, the weights ``(wx wy) wz`` in the same order; only the summation order of the 8 corners
differs (float32 rounding; ``tests/test_nerf_cuda.py`` compares the two).

Backward (gradient to the table only, as ``fields._WeightedGather``): each term w g is added
to its table row by an atomic add. Float atomics add in whatever order the threads arrive, so a
run would not repeat bit for bit (``trainer.deterministic``); the terms are added as 64-bit
fixed-point integers instead, which is exact and so independent of the order. The scale is a
power of two, 2^k with k the largest integer such that S 2^k <= 2^FIXED_POINT_BITS where
S = sum |g| bounds every row's sum (each point's 8 weights sum to 1): no overflow, and a term is
rounded only below 2^-k = S 2^-61, far under float32's own rounding of the result. A non-finite
gradient gives a non-finite table gradient (the trainer's check still sees it).
"""

from __future__ import annotations

import torch
from torch import Tensor

try:  # Triton ships with torch's CUDA builds; a CPU-only install may lack it
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - the CPU path never calls the kernels
    triton = None

# S 2^k <= 2^61: two bits of head room under int64's 2^63 for the per-term rounding (<= 1/2 each)
FIXED_POINT_BITS = 61
BLOCK = 256  # points per program (a power of two for tl.arange)


def available() -> bool:
    return triton is not None


if triton is not None:

    @triton.jit
    def _corners(x_ptr, res_ptr, size_ptr, off_ptr, n, mask, level, n_dense):
        """Per point: the cell (bx, by, bz), the fractions (fx, fy, fz), the level's constants."""
        res = tl.load(res_ptr + level)
        size = tl.load(size_ptr + level)
        off = tl.load(off_ptr + level)
        resf = res.to(tl.float32)
        px = tl.minimum(tl.maximum(tl.load(x_ptr + n * 3 + 0, mask=mask, other=0.0), 0.0), 1.0) * resf
        py = tl.minimum(tl.maximum(tl.load(x_ptr + n * 3 + 1, mask=mask, other=0.0), 0.0), 1.0) * resf
        pz = tl.minimum(tl.maximum(tl.load(x_ptr + n * 3 + 2, mask=mask, other=0.0), 0.0), 1.0) * resf
        bx = tl.minimum(tl.floor(px).to(tl.int64), res - 1)
        by = tl.minimum(tl.floor(py).to(tl.int64), res - 1)
        bz = tl.minimum(tl.floor(pz).to(tl.int64), res - 1)
        fx = px - bx.to(tl.float32)
        fy = py - by.to(tl.float32)
        fz = pz - bz.to(tl.float32)
        return bx, by, bz, fx, fy, fz, res, size, off, level >= n_dense

    @triton.jit
    def _corner(bx, by, bz, fx, fy, fz, res, size, off, hashed, c: tl.constexpr,
                p1, p2):
        """Table row and trilinear weight of corner c = (dx dy dz) in binary."""
        dx: tl.constexpr = (c >> 2) & 1
        dy: tl.constexpr = (c >> 1) & 1
        dz: tl.constexpr = c & 1
        cx, cy, cz = bx + dx, by + dy, bz + dz
        wx = 1.0 - fx
        if dx == 1:
            wx = fx
        wy = 1.0 - fy
        if dy == 1:
            wy = fy
        wz = 1.0 - fz
        if dz == 1:
            wz = fz
        w = wx * wy * wz
        r1 = res + 1
        dense = cx * (r1 * r1) + cy * r1 + cz
        hashed_idx = (cx ^ (cy * p1) ^ (cz * p2)) & (size - 1)  # HASH_PRIMES[0] = 1
        idx = tl.where(hashed, hashed_idx, dense) + off
        return idx, w

    @triton.jit
    def _encode_fwd(x_ptr, table_ptr, out_ptr, res_ptr, size_ptr, off_ptr, N, n_dense,
                    primes_ptr, L: tl.constexpr, F: tl.constexpr, BLOCK: tl.constexpr):
        level = tl.program_id(1)
        n = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = n < N
        f = tl.arange(0, F)
        p1, p2 = tl.load(primes_ptr + 1), tl.load(primes_ptr + 2)
        bx, by, bz, fx, fy, fz, res, size, off, hashed = _corners(
            x_ptr, res_ptr, size_ptr, off_ptr, n, mask, level, n_dense)
        acc = tl.zeros((BLOCK, F), dtype=tl.float32)
        for c in tl.static_range(8):
            idx, w = _corner(bx, by, bz, fx, fy, fz, res, size, off, hashed, c, p1, p2)
            feat = tl.load(table_ptr + idx[:, None] * F + f[None, :], mask=mask[:, None], other=0.0)
            acc += w[:, None] * feat
        tl.store(out_ptr + n[:, None] * (L * F) + level * F + f[None, :], acc, mask=mask[:, None])

    @triton.jit
    def _encode_bwd(x_ptr, g_ptr, acc_ptr, scale_ptr, res_ptr, size_ptr, off_ptr, N, n_dense,
                    primes_ptr, L: tl.constexpr, F: tl.constexpr, BLOCK: tl.constexpr):
        level = tl.program_id(1)
        n = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = n < N
        f = tl.arange(0, F)
        scale = tl.load(scale_ptr)  # float64, 2^k
        p1, p2 = tl.load(primes_ptr + 1), tl.load(primes_ptr + 2)
        bx, by, bz, fx, fy, fz, res, size, off, hashed = _corners(
            x_ptr, res_ptr, size_ptr, off_ptr, n, mask, level, n_dense)
        g = tl.load(g_ptr + n[:, None] * (L * F) + level * F + f[None, :], mask=mask[:, None], other=0.0)
        for c in tl.static_range(8):
            idx, w = _corner(bx, by, bz, fx, fy, fz, res, size, off, hashed, c, p1, p2)
            term = (w[:, None] * g).to(tl.float64) * scale  # w g rounded to float32, as fields.py's
            fixed = tl.floor(term + 0.5).to(tl.int64)
            tl.atomic_add(acc_ptr + idx[:, None] * F + f[None, :], fixed, mask=mask[:, None], sem="relaxed")


def _launch_args(grid) -> tuple:
    return grid.resolutions, grid.sizes, grid.offsets


def encode_forward(grid, x: Tensor) -> Tensor:
    """grid: a fields.MultiResGrid on CUDA (float32 table); x (N, 3) in [0, 1] -> (N, L * F)."""
    x = x.contiguous()
    N, L, F = x.shape[0], grid.n_levels, grid.n_features
    out = torch.empty(N, L * F, device=x.device, dtype=torch.float32)
    if N:
        _encode_fwd[(triton.cdiv(N, BLOCK), L)](
            x, grid.table, out, *_launch_args(grid), N, grid.n_dense,
            grid.primes, L=L, F=F, BLOCK=BLOCK)
    return out


def fixed_point_scale(g: Tensor) -> Tensor:
    """2^k, k = floor(FIXED_POINT_BITS - log2(sum |g|)), as a 1-element float64 tensor on g's
    device (no host synchronization); sum |g| = 0 gives 2^(bits + 126), any scale will do."""
    s = g.abs().sum(dtype=torch.float64).clamp_min(2.0**-126)
    return torch.exp2(torch.floor(FIXED_POINT_BITS - torch.log2(s))).reshape(1)


def encode_backward(grid, x: Tensor, g: Tensor) -> Tensor:
    """The table's gradient (T, F) float32 of sum(encode(x) * g); deterministic (module docstring)."""
    g = g.contiguous()
    N, L, F = x.shape[0], grid.n_levels, grid.n_features
    acc = torch.zeros(grid.table.shape, device=g.device, dtype=torch.int64)
    scale = fixed_point_scale(g)
    if N:
        _encode_bwd[(triton.cdiv(N, BLOCK), L)](
            x, g, acc, scale, *_launch_args(grid), N, grid.n_dense,
            grid.primes, L=L, F=F, BLOCK=BLOCK)
    return (acc.to(torch.float64) / scale).to(grid.table.dtype)


class _Encode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, table: Tensor, grid) -> Tensor:  # table: for autograd's graph
        ctx.grid = grid
        ctx.save_for_backward(x)
        return encode_forward(grid, x)

    @staticmethod
    def backward(ctx, g: Tensor):
        (x,) = ctx.saved_tensors
        return None, encode_backward(ctx.grid, x, g), None


def encode(grid, x: Tensor) -> Tensor:
    """MultiResGrid's forward through the kernels; no gradient to x (as the torch path)."""
    return _Encode.apply(x.detach().contiguous(), grid.table, grid)
