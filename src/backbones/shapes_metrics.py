"""Exact ShapesWorld metrics (``ExactMetrics``, a mixin of ShapesWorld): the true
distribution is known, so a render is compared with the truth rendered by the world's own renderer **at the
same camera** (same ``ViewBatch``, same resolution), never with a nearby data view.

- distance: RMSE over H x W x 3 (pixels in [0, 1]) after a Gaussian blur of
  ``BLUR_PX_AT_32`` pixels (scaled with the resolution) of both images. The blur makes
  the distance tolerant to sub-pixel silhouette offsets (a NeRF edge half a pixel off
  costs as much raw RMSE as a wrong color) while keeping class differences (the distances
  measured when the blur was chosen: docs/findings.md, "Measurements that justified defaults").
- ``precision``: fraction of eval views whose nearest class *of the prompt* (e.g. the
  four colors of "a cube") is within ``threshold`` (default the world's
  ``precision_threshold``: half the red cube's blurred separation from every other class)
  of the render.
- ``mode_id``: the world class (shape * n_colors + color) the result renders as:
  per view the nearest class over the *whole* world if within ``threshold``, then
  the most frequent of those over the views; -1 if no view is within ``threshold``.
  ``mode_frac`` = fraction of views that agree with it.
- ``rmse``: mean over views of the distance to the nearest prompt class (a
  continuous companion of precision).
- ``nearest_class``: the prompt class nearest on average over the views, without a
  threshold (where a run drifted even before it is within the precision threshold).
- 2D runs (``representation=image``: every eval camera is the same fixed camera, or
  there is none): an optimized image may become *any* view of its class, so the
  same-camera truth is replaced by the whole data set (``precision`` = nearest data
  image of the prompt within ``threshold``, ``mode_id`` = class of the nearest data
  image); no ``janus_rate``. The result carries ``any_view = 1``.
- ``janus_rate`` (marker worlds only): among the eval views where the truth shows
  no marker (its back half), the fraction where the render shows one. The truth is
  the ``mode_id`` class, or the nearest prompt class when there is no mode. 0 for
  the truth, ~1 for an object with a face on every side. A face is a dark patch *on the
  object*: dark pixels inside the truth's silhouette covering at least
  ``MARKER_SEEN_FRACTION`` of the face's frontal area, and around them (a band
  ``FACE_RING_PX_AT_32`` pixels wide, one pixel off the patch, inside the silhouette) mostly
  the object's own shaded colour (within ``BODY_TOL`` of the truth per channel). Without the
  band test a uniformly dark object counted as a face on every side (SDS runs that painted
  the whole sphere black: docs/findings.md, the Janus world).
- ``face_recall`` (marker worlds only): among the eval views where the truth shows its face (the
  truth's marker covers at least ``MARKER_SEEN_FRACTION`` of its frontal area, so the truth itself
  passes the face test there), the fraction where the render shows one too (the same test as
  ``janus_rate``). A faceless object has janus_rate 0 and face_recall 0: janus_rate alone would
  call it Janus-free.
"""

from __future__ import annotations

from collections import Counter

import torch
import torch.nn.functional as F
from torch import Tensor

from src.backbones.shapes_render import AMBIENT, colorize
from src.cameras import ViewBatch
from src.cameras_orbit import make_views

# Gaussian blur (std in pixels at 32 px; scaled with the resolution) applied before RMSE.
BLUR_PX_AT_32 = 1.0

# A render pixel is "marker-like" when its brightest channel is below half the darkest
# shaded albedo of the world (AMBIENT x the color's brightest channel): the marker
# (0.05 x shade) is far below, every object color above. Floor for very dark palettes.
MARKER_DARK_FACTOR = 0.5
MARKER_DARK_FLOOR = 0.08
# The marker counts as seen when at least this fraction of its frontal area (pixels of
# the truth's marker at azimuth 0, same elevation and camera) is marker-like.
MARKER_SEEN_FRACTION = 0.25
# The truth "has no marker" at a view when its marker covers less than this many pixels.
TRUTH_NONE_PIXELS = 0.5
# A face is surrounded by the object: the band of this width (pixels at 32 px, scaled with the
# resolution) around the dark patch, skipping one pixel of blurred edge, inside the truth's
# silhouette, must be at least BODY_FRACTION the object's colour: within BODY_TOL per channel of
# the truth's shaded colour (the marker is 0.05 x shade, every palette colour >= 0.5 in its
# brightest channel; 0.25 leaves room for the NeRF's shading error but not for a dark pixel).
FACE_RING_PX_AT_32 = 2
BODY_TOL = 0.25
BODY_FRACTION = 0.5


def rmse(a: Tensor, b: Tensor) -> Tensor:
    """Per-image RMSE over the last three dims; broadcasts (..., H, W, 3) -> (...)."""
    return ((a - b) ** 2).mean((-1, -2, -3)).sqrt()


def gaussian_blur(x: Tensor, std_px: float) -> Tensor:
    """Separable Gaussian blur of images (..., H, W, 3), replicate padding."""
    if std_px <= 0:
        return x
    r = int(3 * std_px + 1)
    k = torch.exp(-torch.arange(-r, r + 1, dtype=x.dtype) ** 2 / (2 * std_px**2))
    k = k / k.sum()
    shape = x.shape
    y = x.reshape(-1, *shape[-3:]).permute(0, 3, 1, 2)  # (n, 3, H, W)
    y = F.pad(y, (r, r, r, r), mode="replicate").reshape(-1, 1, shape[-3] + 2 * r, shape[-2] + 2 * r)
    y = F.conv2d(F.conv2d(y, k.view(1, 1, 1, -1)), k.view(1, 1, -1, 1))
    return y.reshape(-1, 3, shape[-3], shape[-2]).permute(0, 2, 3, 1).reshape(shape)


def image_distance(a: Tensor, b: Tensor) -> Tensor:
    """The metric's distance: RMSE of blurred images, (..., H, W, 3) x2 broadcast -> (...)."""
    std = BLUR_PX_AT_32 * a.shape[-3] / 32.0
    return rmse(gaussian_blur(a, std), gaussian_blur(b, std))


def _summary(best: Tensor, best_d: Tensor, d_prompt: Tensor, tau: float) -> dict[str, float]:
    """precision / mode_id / mode_frac / rmse from per-view nearest classes and distances (B,)."""
    matched = best[best_d <= tau].tolist()
    mode_id, mode_frac = -1, 0.0
    if matched:
        mode_id, count = Counter(matched).most_common(1)[0]
        mode_frac = count / best.numel()
    return {
        "precision": float((d_prompt <= tau).float().mean()),
        "mode_id": int(mode_id),
        "mode_frac": float(mode_frac),
        "rmse": float(d_prompt.mean()),
    }


def _dilate(mask: Tensor, radius: int) -> Tensor:
    """Binary dilation of (B, H, W) masks by a (2 radius + 1) square."""
    k = 2 * radius + 1
    return F.max_pool2d(mask.float()[:, None], k, stride=1, padding=radius)[:, 0] > 0


def _share(flags: Tensor, where: Tensor, empty: float) -> float:
    """Fraction of ``flags`` (B,) bool that hold among the views ``where`` (B,) bool; ``empty``
    when there is no such view."""
    return float(flags[where].float().mean()) if where.any() else empty


def _is_fixed_camera(views: ViewBatch) -> bool:
    return views.c2w is None or bool((views.c2w == views.c2w[:1]).all())



class ExactMetrics:
    """The exact metrics of a ShapesWorld, as methods of the world (ShapesWorld inherits this
    mixin): they use its renderer (``render_classes``, ``truth_coverage``), its prompt grammar
    and its palette, and live beside the prior they measure."""

    def marker_dark_threshold(self) -> float:
        darkest = float(self.palette.max(-1).values.min()) * AMBIENT
        return max(MARKER_DARK_FLOOR, MARKER_DARK_FACTOR * darkest)

    def face_views(self, samples: Tensor, views: ViewBatch, truth_class: int) -> tuple[Tensor, Tensor, Tensor]:
        """Per view (B,) bool: (the render shows a face, the truth shows no marker, the truth shows
        its face); a face is a dark patch on the object (module docstring)."""
        B, H, W, _ = samples.shape
        cov = self.truth_coverage(truth_class, views, H, W)  # (B, H, W, 4)
        truth_img = colorize(cov, self.palette[int(truth_class) % len(self.colors)], self.background)
        front = make_views(
            torch.zeros(1), views.elevation_deg[:1], views.distance[:1], views.fovy_deg[:1], H, W
        )
        ref_area = float(self.truth_coverage(truth_class, front, H, W)[0, ..., 3].sum())
        on_object = cov[..., 2] < 0.5  # the truth's silhouette
        dark = (samples.max(-1).values < self.marker_dark_threshold()) & on_object  # (B, H, W)
        r = max(1, round(FACE_RING_PX_AT_32 * H / 32))
        near = _dilate(dark, 1)  # the patch and its blurred edge
        ring = _dilate(dark, 1 + r) & ~near & on_object
        body = ring & ((samples - truth_img).abs().max(-1).values < BODY_TOL)
        n_ring = ring.float().sum((-1, -2))
        framed = (n_ring > 0) & (body.float().sum((-1, -2)) >= BODY_FRACTION * n_ring)
        min_area = max(1.0, MARKER_SEEN_FRACTION * ref_area)
        seen = (dark.float().sum((-1, -2)) >= min_area) & framed
        marker_px = cov[..., 3].sum((-1, -2))
        return seen, marker_px < TRUTH_NONE_PIXELS, marker_px >= min_area

    def janus_rate(self, samples: Tensor, views: ViewBatch, truth_class: int) -> float:
        """Fraction of the views where ``truth_class`` shows no marker but ``samples`` show a face
        (a dark patch on the object, see the module docstring)."""
        seen, none, _ = self.face_views(samples, views, truth_class)
        return _share(seen, none, empty=0.0)

    def face_recall(self, samples: Tensor, views: ViewBatch, truth_class: int) -> float:
        """Fraction of the views where ``truth_class`` shows its face and ``samples`` show one too
        (module docstring); 1.0 when the truth shows its face at no view (nothing to recall)."""
        seen, _, shows = self.face_views(samples, views, truth_class)
        return _share(seen, shows, empty=1.0)

    @torch.no_grad()
    def evaluate(self, samples: Tensor, views: ViewBatch, prompt: str,
                 threshold: float | None = None) -> dict[str, float]:
        """precision, mode_id, mode_frac, rmse (+ janus_rate) of renders (B, H, W, 3) in [0, 1]."""
        tau = self.precision_threshold if threshold is None else float(threshold)
        samples = samples.detach().float().cpu().clamp(0, 1)
        views = views.to("cpu")
        B, H, W, _ = samples.shape
        if len(views) != B:
            raise ValueError(f"{B} samples but {len(views)} views")
        if _is_fixed_camera(views) and H == W == self.resolution:
            return self._metrics_any_view(samples, prompt, tau)
        truth = self.render_classes(range(self.n_classes), views, H, W)  # (K, B, H, W, 3)
        dist = image_distance(truth, samples[None])  # (K, B)
        prompt_cls = self.prompt_classes(prompt)
        d_prompt = dist[prompt_cls].min(0).values  # (B,)

        best_d, best = dist.min(0)
        out = _summary(best, best_d, d_prompt, tau)
        # the prompt class the result is nearest to on average over the views, threshold or not:
        # where a run drifted even when it is not (yet) within the precision threshold
        out["nearest_class"] = prompt_cls[int(dist[prompt_cls].mean(1).argmin())]
        if self.marker:
            mode_id = out["mode_id"]
            truth_cls = mode_id if mode_id >= 0 else out["nearest_class"]
            seen, none, shows = self.face_views(samples, views, truth_cls)
            out["janus_rate"] = _share(seen, none, empty=0.0)
            out["face_recall"] = _share(seen, shows, empty=1.0)
        return out

    def _metrics_any_view(self, samples: Tensor, prompt: str, tau: float) -> dict[str, float]:
        """2D runs: distances to every data image; -> the same keys plus any_view = 1."""
        std = BLUR_PX_AT_32 * samples.shape[-3] / 32.0
        data = gaussian_blur(self.images().float().cpu(), std)  # (N, H, W, 3)
        blurred = gaussian_blur(samples, std)
        dist = torch.stack([rmse(data, x[None]) for x in blurred])  # (B, N)
        in_prompt = self.prompt_mask(prompt, use_view=False).cpu()
        d_prompt = dist[:, in_prompt].min(1).values
        best_d, best_i = dist.min(1)
        out = _summary(self.class_idx.cpu()[best_i], best_d, d_prompt, tau)
        out["any_view"] = 1
        return out
