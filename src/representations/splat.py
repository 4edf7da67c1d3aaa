"""3D Gaussian splatting, functional core: cameras -> gsplat's conventions, projection,
and a pure-torch reference rasterizer next to gsplat's CUDA one (DESIGN.md "Style").

Conventions are gsplat 1.5.3's (``gsplat/cuda/csrc/ProjectionEWA3DGSFused.cu``,
``RasterizeToPixels3DGSFwd.cu``, ``gsplat/cuda/include/Common.h``):

- Cameras: gsplat takes world-to-camera ``viewmats`` in the **OpenCV** convention (camera
  looks down +z, image y points down, x right) and pinhole ``Ks``; a pixel (u, v) has its
  centre at (u + 0.5, v + 0.5). Our ``ViewBatch.c2w`` is **OpenGL** (looks down -z, y up;
  src/cameras_orbit.py). The two camera frames differ by a flip of the camera y and z axes,
  ``c2w_cv = c2w_gl @ diag(1, -1, -1, 1)``, and ``viewmat = c2w_cv^-1 = [R^T | -R^T t]``
  (R, t of c2w_cv; c2w is rigid). ``K = [[f, 0, W/2], [0, f, H/2], [0, 0, 1]]`` with
  ``f = 0.5 H / tan(fovy / 2)``: the same focal, principal point and pixel centres as
  ``get_rays``, so a splat and a NeRF see the same picture from the same ViewBatch.
- Projection (EWA splatting, Zwicker et al. 2002): Sigma = R S S^T R^T, Sigma_cam =
  W Sigma W^T, Sigma_2d = J Sigma_cam J^T with the perspective Jacobian J (its x/z, y/z
  clamped to 1.3 tan(fov/2), gsplat's guard band), plus ``eps2d = 0.3`` px^2 on the
  diagonal (low-pass filter). Culled: depth <= near_plane (0.01) or >= far_plane, opacity
  < 1/255, and boxes that miss the image; the box radius is ceil(e sigma) with gsplat's
  opacity-aware e = min(3.33, sqrt(2 ln(255 o))) (where alpha falls below 1/255).
- Compositing, front to back by camera depth z: alpha_i = min(0.999, o_i exp(-q_i / 2))
  with q_i the Mahalanobis distance^2 under the conic; skipped if alpha_i < 1/255 (or the
  quadratic form is negative); a pixel stops *before* the Gaussian that would bring its
  transmittance to <= 1e-4. rgb = sum_i T_i alpha_i c_i, alpha = 1 - T_final.
  (gsplat 1.5.3 clamps alpha at 0.999; the 3DGS paper's rasterizer used 0.99.)

The reference reuses gsplat's own pure-torch functions for everything they cover
(``_quat_scale_to_covar_preci``, ``_world_to_cam``, ``_persp_proj``, ``_spherical_harmonics``);
written here are the projection's last lines (blur/conic/radii, with the CUDA kernel's
opacity-aware radius that the torch twin lacks: ``project``) and the per-pixel compositing,
because gsplat's pure-torch compositing (``_rasterize_to_pixels``/``accumulate``) needs
its CUDA ``rasterize_to_indices_in_range``. It is vectorized over (pixels of a tile) x
(Gaussians touching that tile), with gsplat's 16 px tiles and its tile-overlap rule, so
work grows with overlaps, not with H * W * N.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

# gsplat 1.5.3 constants (see the module docstring for where each lives).
ALPHA_THRESHOLD = 1.0 / 255.0
MAX_ALPHA = 0.999
TRANSMITTANCE_MIN = 1e-4
EPS2D = 0.3
NEAR_PLANE = 0.01
FAR_PLANE = 1e10
TILE_SIZE = 16
RADIUS_SIGMAS = 3.33  # box half-width in standard deviations (ProjectionEWA3DGSFused.cu: extend)
# OpenGL camera frame -> OpenCV camera frame (flip camera y and z).
_GL_TO_CV = (1.0, -1.0, -1.0)


def viewmats_from_c2w(c2w: Tensor) -> Tensor:
    """OpenGL camera-to-world (B, 4, 4) -> gsplat world-to-camera, OpenCV (B, 4, 4)."""
    R = c2w[:, :3, :3] * c2w.new_tensor(_GL_TO_CV)  # columns: right, down, forward
    t = c2w[:, :3, 3]
    Rt = R.transpose(1, 2)
    view = torch.zeros_like(c2w)
    view[:, :3, :3] = Rt
    view[:, :3, 3] = -(Rt @ t[:, :, None])[:, :, 0]
    view[:, 3, 3] = 1.0
    return view


def intrinsics(fovy_deg: Tensor, height: int, width: int) -> Tensor:
    """Pinhole Ks (B, 3, 3) from the vertical field of view, as ``get_rays``."""
    f = 0.5 * height / torch.tan(0.5 * torch.deg2rad(fovy_deg))
    K = torch.zeros(fovy_deg.shape[0], 3, 3, dtype=fovy_deg.dtype, device=fovy_deg.device)
    K[:, 0, 0], K[:, 1, 1] = f, f
    K[:, 0, 2], K[:, 1, 2], K[:, 2, 2] = 0.5 * width, 0.5 * height, 1.0
    return K


def project(
    means: Tensor, quats: Tensor, scales: Tensor, viewmats: Tensor, Ks: Tensor,
    width: int, height: int, eps2d: float = EPS2D,
    near_plane: float = NEAR_PLANE, far_plane: float = FAR_PLANE, opacities: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """EWA projection of N Gaussians into C cameras.

    means (N, 3), quats (N, 4) (wxyz, any norm), scales (N, 3), viewmats (C, 4, 4),
    Ks (C, 3, 3), opacities (N,) or None -> radii (C, N, 2) int32 (0 = culled), means2d
    (C, N, 2) px, depths (C, N) camera z, conics (C, N, 3) upper triangle of Sigma_2d^-1.

    gsplat's pure-torch functions do the geometry (``_quat_scale_to_covar_preci``,
    ``_world_to_cam``, ``_persp_proj``); the rest is ``ProjectionEWA3DGSFused.cu`` after
    the projection: blur by eps2d, cull det <= 0 and depth outside [near, far], conic, box
    radius, cull boxes off the image. With ``opacities=None`` that is gsplat's
    ``_fully_fused_projection`` (radius 3.33 sigma; tested equal). With opacities it is what
    ``gsplat.rasterization`` computes on CUDA, which passes them to the projection: a
    Gaussian with opacity < 1/255 is culled and the radius is the opacity-aware bound
    min(3.33, sqrt(2 ln(255 o))) sigma (arXiv:2402.00525 B.2) -- the torch twin has no
    ``opacities`` argument, and the densification strategy counts a Gaussian as seen where
    its radius is > 0, so the CPU path needs the CUDA rule to make the same decisions.
    """
    from gsplat.cuda._torch_impl import _persp_proj, _quat_scale_to_covar_preci, _world_to_cam

    covars, _ = _quat_scale_to_covar_preci(quats, scales, compute_covar=True, compute_preci=False)
    means_c, covars_c = _world_to_cam(means, covars, viewmats)
    means2d, cov2d = _persp_proj(means_c, covars_c, Ks, width, height)
    cov2d = cov2d + torch.eye(2, device=means.device, dtype=means.dtype) * eps2d
    det = cov2d[..., 0, 0] * cov2d[..., 1, 1] - cov2d[..., 0, 1] * cov2d[..., 1, 0]
    det_safe = det.clamp(min=1e-10)  # as gsplat's torch twin: culled entries stay finite
    conics = torch.stack([cov2d[..., 1, 1] / det_safe, -(cov2d[..., 0, 1] + cov2d[..., 1, 0]) / 2.0 / det_safe,
                          cov2d[..., 0, 0] / det_safe], dim=-1)
    depths = means_c[..., 2]
    with torch.no_grad():
        extend = torch.full_like(depths, RADIUS_SIGMAS)
        valid = (det > 0) & (depths > near_plane) & (depths < far_plane)
        if opacities is not None:
            o = opacities.detach().to(depths.dtype).expand_as(depths)
            valid &= o >= ALPHA_THRESHOLD
            extend = torch.minimum(extend, (2.0 * torch.log(o.clamp_min(ALPHA_THRESHOLD) / ALPHA_THRESHOLD)).sqrt())
        radius = torch.ceil(extend[..., None] * torch.stack([cov2d[..., 0, 0], cov2d[..., 1, 1]], -1).clamp_min(0).sqrt())
        m = means2d.detach()
        inside = ((m[..., 0] + radius[..., 0] > 0) & (m[..., 0] - radius[..., 0] < width)
                  & (m[..., 1] + radius[..., 1] > 0) & (m[..., 1] - radius[..., 1] < height))
        radii = torch.where((valid & inside)[..., None], radius, torch.zeros_like(radius)).int()
    return radii, means2d, depths, conics


def sh_colors(sh_degree: int, means: Tensor, coeffs: Tensor, viewmats: Tensor) -> Tensor:
    """View-dependent colour of N Gaussians in C cameras from SH coefficients, gsplat's rule.

    means (N, 3), coeffs (N, K, 3) with (sh_degree + 1)^2 <= K, viewmats (C, 4, 4) -> rgb
    (C, N, 3): the first (sh_degree + 1)^2 bands evaluated at the direction camera -> Gaussian
    (gsplat's pure-torch ``_spherical_harmonics``), + 0.5, clamped at 0 (``gsplat.rasterization``:
    "apple-to-apple with Inria's CUDA backend"; no upper clamp, as there).
    """
    from gsplat.cuda._torch_impl import _spherical_harmonics

    campos = torch.inverse(viewmats)[:, :3, 3]  # (C, 3)
    dirs = means[None, :, :] - campos[:, None, :]  # (C, N, 3)
    shs = coeffs[None].expand(dirs.shape[0], *coeffs.shape)
    return torch.clamp_min(_spherical_harmonics(sh_degree, dirs, shs) + 0.5, 0.0)


def composite_pixels(pix: Tensor, means2d: Tensor, conics: Tensor, opacities: Tensor,
                     features: Tensor) -> tuple[Tensor, Tensor]:
    """Front-to-back alpha compositing of M depth-sorted 2D Gaussians at P pixel centres.

    pix (P, 2), means2d (M, 2), conics (M, 3), opacities (M,), features (M, D)
    -> features (P, D), alpha (P, 1). gsplat's rule (module docstring), differentiable.
    """
    d = means2d[None, :, :] - pix[:, None, :]  # (P, M, 2)
    q = 0.5 * (conics[:, 0] * d[..., 0] ** 2 + conics[:, 2] * d[..., 1] ** 2) + conics[:, 1] * d[..., 0] * d[..., 1]
    alpha = torch.clamp_max(opacities * torch.exp(-q), MAX_ALPHA)
    alpha = torch.where((q < 0) | (alpha < ALPHA_THRESHOLD), torch.zeros_like(alpha), alpha)
    T_after = torch.cumprod(1.0 - alpha, dim=1)  # transmittance after each Gaussian
    # gsplat stops before the Gaussian whose T_after <= 1e-4; T_after only decreases, so
    # the kept Gaussians are exactly those with T_after > 1e-4.
    keep = T_after > TRANSMITTANCE_MIN
    T_before = torch.cat([torch.ones_like(T_after[:, :1]), T_after[:, :-1]], dim=1)
    w = torch.where(keep, alpha * T_before, torch.zeros_like(alpha))  # (P, M)
    return w @ features, w.sum(1, keepdim=True)


def rasterize_reference(
    means2d: Tensor, conics: Tensor, depths: Tensor, radii: Tensor, opacities: Tensor,
    features: Tensor, width: int, height: int, tile_size: int = TILE_SIZE,
) -> tuple[Tensor, Tensor]:
    """Pure-torch rasterization of projected Gaussians, one camera at a time.

    means2d (C, N, 2), conics (C, N, 3), depths (C, N), radii (C, N, 2), opacities (N,),
    features (C, N, D) -> features (C, H, W, D), alphas (C, H, W, 1).
    Per 16 px tile, the Gaussians whose box overlaps it (gsplat's ``isect_tiles`` rule:
    tiles floor((m - r) / s) .. ceil((m + r) / s) - 1), sorted by depth.
    """
    C, N = depths.shape
    D = features.shape[-1]
    dev, dt = means2d.device, means2d.dtype
    tiles_x, tiles_y = math.ceil(width / tile_size), math.ceil(height / tile_size)
    out_f, out_a = [], []
    for c in range(C):
        ids = ((radii[c] > 0).all(-1) & (opacities >= ALPHA_THRESHOLD)).nonzero()[:, 0]
        ids = ids[torch.argsort(depths[c, ids], stable=True)]
        m2, r = means2d[c, ids], radii[c, ids].to(dt)
        lo = torch.floor((m2.detach() - r) / tile_size)
        hi = torch.ceil((m2.detach() + r) / tile_size)
        chunks_f, chunks_a, chunks_p = [], [], []
        for ty in range(tiles_y):
            for tx in range(tiles_x):
                sel = (lo[:, 0] <= tx) & (tx < hi[:, 0]) & (lo[:, 1] <= ty) & (ty < hi[:, 1])
                x0, y0 = tx * tile_size, ty * tile_size
                xs = torch.arange(x0, min(x0 + tile_size, width), device=dev)
                ys = torch.arange(y0, min(y0 + tile_size, height), device=dev)
                yy, xx = torch.meshgrid(ys, xs, indexing="ij")
                chunks_p.append((yy * width + xx).reshape(-1))
                pix = torch.stack([xx, yy], -1).reshape(-1, 2).to(dt) + 0.5
                g = ids[sel]
                if g.numel() == 0:
                    chunks_f.append(pix.new_zeros(pix.shape[0], D))
                    chunks_a.append(pix.new_zeros(pix.shape[0], 1))
                    continue
                f, a = composite_pixels(pix, means2d[c, g], conics[c, g], opacities[g], features[c, g])
                chunks_f.append(f)
                chunks_a.append(a)
        order = torch.argsort(torch.cat(chunks_p))
        out_f.append(torch.cat(chunks_f)[order].view(height, width, D))
        out_a.append(torch.cat(chunks_a)[order].view(height, width, 1))
    return torch.stack(out_f), torch.stack(out_a)


def rasterize_torch(
    means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, colors: Tensor,
    viewmats: Tensor, Ks: Tensor, width: int, height: int, eps2d: float = EPS2D,
    near_plane: float = NEAR_PLANE, far_plane: float = FAR_PLANE, tile_size: int = TILE_SIZE,
    sh_degree: int | None = None,
) -> tuple[Tensor, Tensor, Tensor, dict]:
    """The CPU (any device) path. means (N, 3), quats (N, 4), scales (N, 3) (not log),
    opacities (N,) in [0, 1], colors (N, D) or, with ``sh_degree``, SH coefficients (N, K, 3)
    (gsplat's convention), viewmats (C, 4, 4), Ks (C, 3, 3) -> colors (C, H, W, D), alphas
    (C, H, W, 1), accumulated depth sum_i w_i z_i (C, H, W, 1), and ``info``: the keys of
    ``gsplat.rasterization``'s meta that its densification strategies read (``means2d``
    (C, N, 2) in the graph, ``radii`` (C, N, 2), ``width``, ``height``, ``n_cameras``,
    ``gaussian_ids`` = None: not packed) plus ``depths`` and ``conics``."""
    radii, means2d, depths, conics = project(
        means, F.normalize(quats, dim=-1), scales, viewmats, Ks, width, height, eps2d, near_plane, far_plane,
        opacities=opacities)
    C = depths.shape[0]
    feats = colors.expand(C, *colors.shape) if sh_degree is None else sh_colors(sh_degree, means, colors, viewmats)
    feats = torch.cat([feats, depths[..., None]], -1)
    out, alpha = rasterize_reference(means2d, conics, depths, radii, opacities, feats, width, height, tile_size)
    info = {"means2d": means2d, "radii": radii, "depths": depths, "conics": conics, "width": width,
            "height": height, "n_cameras": C, "n_batches": 1, "gaussian_ids": None, "camera_ids": None,
            "tile_size": tile_size}
    return out[..., :-1], alpha, out[..., -1:], info


def rasterize_gsplat(
    means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, colors: Tensor,
    viewmats: Tensor, Ks: Tensor, width: int, height: int, eps2d: float = EPS2D,
    near_plane: float = NEAR_PLANE, far_plane: float = FAR_PLANE, tile_size: int = TILE_SIZE,
    sh_degree: int | None = None,
) -> tuple[Tensor, Tensor, Tensor, dict]:
    """The CUDA path: ``gsplat.rasterization`` (classic mode, no background, not packed),
    same signature and outputs as ``rasterize_torch`` (``info`` is gsplat's meta).
    float32 only (gsplat's kernels)."""
    from gsplat import rasterization

    dtype = means.dtype
    f32 = lambda x: x.float()  # noqa: E731
    out, alpha, info = rasterization(
        f32(means), f32(F.normalize(quats, dim=-1)), f32(scales), f32(opacities), f32(colors),
        f32(viewmats), f32(Ks), width, height, near_plane=near_plane, far_plane=far_plane,
        eps2d=eps2d, sh_degree=sh_degree, tile_size=tile_size, packed=False, render_mode="RGB+D",
        rasterize_mode="classic",
    )
    return out[..., :-1].to(dtype), alpha.to(dtype), out[..., -1:].to(dtype), info


def rasterize(*args, backend: str = "auto", **kw) -> tuple[Tensor, Tensor, Tensor, dict]:
    """``backend``: auto (gsplat on CUDA tensors, the torch reference otherwise) | gsplat | torch."""
    if backend not in ("auto", "gsplat", "torch"):
        raise ValueError(f"backend must be auto | gsplat | torch, got {backend!r}")
    means = args[0] if args else kw["means"]
    if backend == "gsplat" and not means.is_cuda:
        raise RuntimeError("backend=gsplat needs CUDA tensors (gsplat's rasterizer); use torch")
    use_gsplat = backend == "gsplat" or (backend == "auto" and means.is_cuda)
    return (rasterize_gsplat if use_gsplat else rasterize_torch)(*args, **kw)


def knn_scale(points: Tensor, k: int = 3, chunk: int = 2048) -> Tensor:
    """sqrt of the mean squared distance to the k nearest other points, (N, 3) -> (N,):
    3DGS's initial scale (``simple_knn.distCUDA2``, clamped at 1e-7 before the sqrt)."""
    out = []
    for i in range(0, points.shape[0], chunk):
        d2 = torch.cdist(points[i : i + chunk], points).square()
        d2 = d2.topk(min(k + 1, points.shape[0]), dim=1, largest=False).values[:, 1:]  # drop self
        out.append(d2.mean(1).clamp_min(1e-7).sqrt())
    return torch.cat(out)


__all__ = [
    "ALPHA_THRESHOLD", "EPS2D", "MAX_ALPHA", "NEAR_PLANE", "RADIUS_SIGMAS", "TRANSMITTANCE_MIN",
    "composite_pixels", "intrinsics", "knn_scale", "project", "rasterize", "rasterize_gsplat",
    "rasterize_reference", "rasterize_torch", "sh_colors", "viewmats_from_c2w",
]
