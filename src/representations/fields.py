"""Neural fields in pure torch: a multi-resolution grid encoding, small MLPs, backgrounds.

Everything here runs on the CPU and on CUDA with the same code (no tiny-cuda-nn),
so the NeRF of ``nerf.py`` is testable on a laptop.

``MultiResGrid`` is Instant-NGP's encoding (Mueller et al. 2022): L levels of
feature grids, resolutions growing geometrically from ``base_resolution`` by
``per_level_scale``; a level whose dense grid has more than ``2**log2_hashmap_size``
vertices is hashed (Instant-NGP's spatial hash, primes below), the others are
indexed densely (no collisions). Lookup = trilinear interpolation of the 8 corner
features. All levels share one parameter table and are gathered in one call,
which is what keeps it CPU-fast. ``grid_sample_reference`` is the pure-torch
reference for dense levels (``F.grid_sample``), used by the tests.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Instant-NGP's spatial hash (Teschner et al. 2003 primes, first = 1 for coherence).
HASH_PRIMES = (1, 2654435761, 805459861)
# Instant-NGP / threestudio init of the tables: U(-1e-4, 1e-4).
GRID_INIT_SCALE = 1e-4


class MultiResGrid(nn.Module):
    """x in [0, 1]^3, (N, 3) -> features (N, n_levels * n_features).

    threestudio's ``HashGrid`` defaults are n_levels 16, n_features 2,
    log2_hashmap_size 19, base_resolution 16, per_level_scale 1.447269 (-> 2048);
    the config (conf/representation/nerf.yaml) uses a smaller grid that runs on a CPU.
    """

    def __init__(
        self,
        n_levels: int = 8,
        n_features: int = 2,
        log2_hashmap_size: int = 15,
        base_resolution: int = 16,
        per_level_scale: float = 1.447269,
    ):
        super().__init__()
        self.n_levels, self.n_features = n_levels, n_features
        self.output_dim = n_levels * n_features
        max_entries = 2**log2_hashmap_size
        res, sizes, hashed = [], [], []
        for level in range(n_levels):
            r = int(math.floor(base_resolution * per_level_scale**level))
            n_dense = (r + 1) ** 3  # grid *vertices*: the resolution counts cells
            res.append(r)
            hashed.append(n_dense > max_entries)
            sizes.append(min(n_dense, max_entries))
        offsets = [0]
        for s in sizes:
            offsets.append(offsets[-1] + s)
        self.register_buffer("resolutions", torch.tensor(res, dtype=torch.long), persistent=False)
        self.register_buffer("sizes", torch.tensor(sizes, dtype=torch.long), persistent=False)
        self.register_buffer("hashed", torch.tensor(hashed), persistent=False)
        self.register_buffer("offsets", torch.tensor(offsets[:-1], dtype=torch.long), persistent=False)
        self.register_buffer("primes", torch.tensor(HASH_PRIMES, dtype=torch.long), persistent=False)
        self.n_dense = sum(not h for h in hashed)
        if any(hashed[: self.n_dense]) or not all(hashed[self.n_dense :]):
            raise ValueError("per_level_scale must be >= 1 (dense levels first, then hashed)")
        # int32 corner indices where they fit (half the memory traffic of int64, the same rows):
        # the table's rows and every hash product (coordinate <= R times prime mod T < T)
        fits = offsets[-1] < 2**31 and (max(res) + 1) * max_entries < 2**31
        self.index_dtype = torch.int32 if fits else torch.long
        self.table = nn.Parameter(
            torch.empty(offsets[-1], n_features).uniform_(-GRID_INIT_SCALE, GRID_INIT_SCALE)
        )

    def _corner_index(self, b2: Tensor, levels: slice, hashed: bool, out: Tensor) -> None:
        """Table rows of the 8 corners, from per-axis corner coordinates, written into ``out``.

        b2: (N, l, 3, 2) integer coordinates (cell, cell + 1) per axis -> out (N, l, 2, 2, 2).
        Per-axis products are formed once (2 values per axis instead of 8 x 3) and combined
        by broadcasting: this is most of the CPU time of the lookup, hence index_dtype.
        """
        off = self.offsets[levels].to(out.dtype).view(1, -1, 1)
        if hashed:  # Instant-NGP: (x p0) xor (y p1) xor (z p2) mod T, T a power of two
            mask = (self.sizes[levels] - 1).view(1, -1, 1, 1)
            # (x p) mod T = (x (p mod T)) mod T: the primes' low bits decide the hash
            a = (b2 * (self.primes.view(1, 1, 3, 1) & mask).to(b2.dtype)) & mask.to(b2.dtype)
            torch.bitwise_xor((a[:, :, 0, :, None] ^ a[:, :, 1, None, :])[..., None], a[:, :, 2, None, None, :], out=out)
            out += off[..., None, None]
        else:  # row-major (x, y, z) over the (R+1)^3 vertices, no collisions
            r1 = (self.resolutions[levels] + 1).view(1, -1, 1)
            a = b2 * torch.stack([r1 * r1, r1, torch.ones_like(r1)], 2).to(b2.dtype)
            torch.add((a[:, :, 0, :, None] + off[..., None] + a[:, :, 1, None, :])[..., None],
                      a[:, :, 2, None, None, :], out=out)

    # representation.fast_field: the lookup through fused Triton kernels on CUDA
    # (hashgrid_triton.py; this method stays the reference, and the path on the CPU)
    fast = False

    def forward(self, x: Tensor) -> Tensor:
        if self.fast and x.is_cuda and x.dtype == self.table.dtype == torch.float32:
            from src.representations import hashgrid_triton

            if hashgrid_triton.available():
                return hashgrid_triton.encode(self, x)
        N, L, it = x.shape[0], self.n_levels, self.index_dtype
        pos = x.clamp(0.0, 1.0)[:, None, :] * self.resolutions[:, None].to(x.dtype)  # (N, L, 3)
        base = pos.floor().to(it).clamp_max(self.resolutions[:, None].to(it) - 1)  # cell, (N, L, 3)
        frac = pos - base.to(x.dtype)  # (N, L, 3) in [0, 1]
        b2 = torch.stack([base, base + 1], -1)  # (N, L, 3, 2)
        f2 = torch.stack([1.0 - frac, frac], -1)  # (N, L, 3, 2): linear weights per axis
        w = f2[:, :, 0, :, None, None] * f2[:, :, 1, None, :, None] * f2[:, :, 2, None, None, :]
        nd = self.n_dense  # levels [0, nd) are dense, [nd, L) hashed (resolution grows)
        idx = torch.empty(N, L, 2, 2, 2, dtype=it, device=x.device)
        if nd > 0:
            self._corner_index(b2[:, :nd], slice(0, nd), False, idx[:, :nd])
        if nd < L:
            self._corner_index(b2[:, nd:], slice(nd, L), True, idx[:, nd:])
        out = weighted_gather(self.table, idx.view(N * L, 8), w.reshape(N * L, 8).to(self.table.dtype))
        return out.view(N, self.output_dim)

    def dense_level(self, level: int) -> Tensor:
        """The (F, R+1, R+1, R+1) grid of a non-hashed level, axes (i, j, k) = (x, y, z)."""
        if bool(self.hashed[level]):
            raise ValueError(f"level {level} is hashed")
        r1 = int(self.resolutions[level]) + 1
        o = int(self.offsets[level])
        return self.table[o : o + r1**3].view(r1, r1, r1, self.n_features).permute(3, 0, 1, 2)


class _WeightedGather(torch.autograd.Function):
    """out[n] = sum_k w[n, k] table[idx[n, k]]; gradient to the table only.

    Forward on the CPU is ``F.embedding_bag`` (fused gather + weighted sum); on CUDA it is the
    plain gather and sum: embedding_bag's CUDA kernel spreads a bag's features over a warp and
    the grid has 2 features a level, which made it about half of the NeRF's GPU time in a
    profile (docs/stable_diffusion.md, "Where the 64 px step goes"). Backward is one
    ``index_add_``, several times faster on the CPU than embedding_bag's sort-based backward (in chunks on CUDA under deterministic kernels: DETERMINISTIC_INDEX_ADD_CHUNK). The
    weights (trilinear, from the sample positions) need no gradient here.
    """

    @staticmethod
    def forward(ctx, table: Tensor, idx: Tensor, w: Tensor) -> Tensor:
        ctx.save_for_backward(idx, w)
        ctx.n_rows = table.shape[0]
        if table.is_cuda:
            return (w[:, :, None] * table[idx]).sum(1)
        return F.embedding_bag(idx, table, per_sample_weights=w, mode="sum")

    @staticmethod
    def backward(ctx, g: Tensor):
        idx, w = ctx.saved_tensors
        idx = idx.long()  # index_add_ on the CPU is many times slower with int32 indices
        src = (w[:, :, None] * g[:, None, :]).reshape(-1, g.shape[-1])
        chunk = DETERMINISTIC_INDEX_ADD_CHUNK if g.is_cuda and torch.are_deterministic_algorithms_enabled() else None
        return index_add(g.new_zeros(ctx.n_rows, g.shape[-1]), idx.reshape(-1), src, chunk), None, None


# torch's deterministic index_add_ on CUDA sorts its indices (index_put_ with accumulate): at a
# 512 px fast VSD step that sort was the largest part of the peak (docs/stable_diffusion.md,
# "Compile"). In chunks of this many entries it stays deterministic (the chunks
# add in a fixed order) and bounded; a 32 px ShapesWorld render (1024 rays x 512 samples x 8 levels
# x 8 corners = 2^25 entries at most) stays one call, its results unchanged.
DETERMINISTIC_INDEX_ADD_CHUNK = 2**26


def index_add(out: Tensor, index: Tensor, src: Tensor, chunk: int | None = None) -> Tensor:
    """out.index_add_(0, index, src), in consecutive chunks of ``chunk`` entries (None: one call)."""
    n = index.numel()
    step = n if chunk is None else chunk
    for s in range(0, n, max(step, 1)):
        out.index_add_(0, index[s : s + step], src[s : s + step])
    return out


def weighted_gather(table: Tensor, idx: Tensor, w: Tensor) -> Tensor:
    """(T, F), (M, 8) long, (M, 8) -> (M, F). Reference: (w[..., None] * table[idx]).sum(1)."""
    return _WeightedGather.apply(table, idx, w)


def grid_sample_reference(grid: Tensor, x: Tensor) -> Tensor:
    """Trilinear lookup with F.grid_sample; grid (F, R+1, R+1, R+1) over [0,1]^3 with axes
    (x, y, z), x (N, 3) in [0, 1] -> (N, F). The reference for MultiResGrid's dense levels."""
    # grid_sample's input is (N, C, D, H, W) indexed by coordinates (w, h, d) = (z, y, x) here
    coords = (x * 2 - 1).flip(-1).view(1, -1, 1, 1, 3)
    out = F.grid_sample(grid[None], coords, mode="bilinear", align_corners=True)
    return out.view(grid.shape[0], -1).T


def mlp(d_in: int, d_out: int, hidden: int = 64, n_hidden_layers: int = 1) -> nn.Sequential:
    """threestudio's ``VanillaMLP`` (ReLU, no bias-free tricks): 64 neurons, 1 hidden layer."""
    layers: list[nn.Module] = []
    d = d_in
    for _ in range(n_hidden_layers):
        layers += [nn.Linear(d, hidden), nn.ReLU(inplace=True)]
        d = hidden
    layers.append(nn.Linear(d, d_out))
    return nn.Sequential(*layers)


# --- density activations and the initial blob ---------------------------------------
# threestudio ImplicitVolume defaults (geometry/implicit_volume.py):
# density_bias "blob_magic3d", density_blob_scale 10.0, density_blob_std 0.5, "softplus".
TS_DENSITY_BLOB_SCALE = 10.0
TS_DENSITY_BLOB_STD = 0.5


def density_blob(points: Tensor, kind: str, scale: float, std: float) -> Tensor:
    """Pre-activation density bias, (..., 3) world points -> (...).

    blob_magic3d (Magic3D, Lin et al. 2023, as in threestudio): scale * (1 - |x| / std),
    positive inside a ball of radius ``std``, so the first renders see a sphere and
    SDS has an object to shape instead of empty space.
    blob_dreamfusion: scale * exp(-|x|^2 / (2 std^2)).
    """
    if kind in (None, "none", "", 0):
        return torch.zeros_like(points[..., 0])
    r2 = (points**2).sum(-1)
    if kind == "blob_magic3d":
        return scale * (1.0 - r2.clamp_min(1e-12).sqrt() / std)
    if kind == "blob_dreamfusion":
        return scale * torch.exp(-0.5 * r2 / std**2)
    raise ValueError(f"density_bias must be none | blob_magic3d | blob_dreamfusion, got {kind!r}")


def trunc_exp(x: Tensor) -> Tensor:
    """exp with the gradient of exp(clamp(x, max=15)) (Instant-NGP), no inf gradients."""
    return _TruncExp.apply(x)


class _TruncExp(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):  # noqa: D401
        ctx.save_for_backward(x)
        return torch.exp(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * torch.exp(x.clamp(max=15))


DENSITY_ACTIVATIONS = {
    "softplus": F.softplus,
    "exp": trunc_exp,
    "shifted_softplus": lambda x: F.softplus(x - 1.0),
    "shifted_exp": lambda x: trunc_exp(x - 1.0),
}


# --- backgrounds ----------------------------------------------------------------------
class Background(nn.Module):
    """Background color of each ray, directions (..., 3) -> rgb (..., 3) in [0, 1].

    kind:
      constant: a fixed color (e.g. the backbone world's background), not trained;
      learned:  one learned color (sigmoid of a parameter);
      mlp:      threestudio's neural environment map: an MLP of the view direction
                (sigmoid output). Expressive, but can absorb the object under SDS.
    """

    def __init__(self, kind: str = "learned", color=(0.5, 0.5, 0.5), hidden: int = 16):
        super().__init__()
        self.kind = kind
        c = torch.tensor(color, dtype=torch.float32).clamp(1e-3, 1 - 1e-3)
        if kind == "constant":
            self.register_buffer("color", c)
        elif kind == "learned":
            self.logit = nn.Parameter(torch.logit(c))
        elif kind == "mlp":
            self.net = mlp(3, 3, hidden=hidden, n_hidden_layers=2)
            with torch.no_grad():  # start at `color`
                self.net[-1].weight.zero_()
                self.net[-1].bias.copy_(torch.logit(c))
        else:
            raise ValueError(f"background must be constant | learned | mlp, got {kind!r}")

    def forward(self, dirs: Tensor) -> Tensor:
        if self.kind == "constant":
            return self.color.to(dirs).expand_as(dirs)
        if self.kind == "learned":
            return torch.sigmoid(self.logit).to(dirs).expand_as(dirs)
        return torch.sigmoid(self.net(dirs))
