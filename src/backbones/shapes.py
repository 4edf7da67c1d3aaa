"""ShapesWorld: an analytic image prior whose scores are exact (DESIGN.md "analytic backbones").

The world is a finite image set: every (shape, color) class seen from a grid of
orbit cameras (``n_azimuths`` x ``n_elevations`` at one distance and field of
view), rendered by ``shapes_render`` through ``cameras_orbit.get_rays`` (the
trainer's own camera model). The prior for a prompt y is the noised empirical
distribution of the images x_i that match y, with weights w_i(y) (sum 1):

    p_t(x_t | y) = sum_i w_i N(x_t; alpha_t x_i, v_t I),    v_t = alpha_t^2 s^2 + sigma_t^2

(``s`` smooths the data into small Gaussians so that p_0 has a density). Its score is

    grad log p_t(x_t) = sum_i r_i (alpha_t x_i - x_t) / v_t,
    r_i = softmax_i( log w_i - ||x_t - alpha_t x_i||^2 / (2 v_t) )

and with the convention score = -eps / sigma_t (docs/methods.md) the exact epsilon is

    eps(x_t) = sigma_t (x_t - alpha_t xbar) / v_t,    xbar = sum_i r_i x_i

(s = 0: the ideal denoiser, eps = (x_t - alpha_t E[x_0 | x_t]) / sigma_t). ``ideal_eps``
computes it with an online softmax over chunks of images, so memory is
O(batch x chunk) whatever the world's size.

Text: ``embed(prompt)`` is the weight vector w(y) (N,), so ``Conditioning.select``
gives each sample its own mixture. Grammar: ``[a|an|the] [<color>] <shape>[, <view> view]``
(``object`` stands for any shape; the null prompt "" is every image), e.g. "a red
cube", "a cone", "a green sphere, back view". Views follow ``view_prompt_index``.
The optional front bias weights image i by ``exp(kappa cos azimuth_i)`` (a von Mises
density over azimuth, like photo collections that favour the front).

View adherence ``a`` (``view_adherence``, 1 by default): Stable Diffusion obeys a view
prompt only partly, and a front-biased photo collection then paints a face on every side
(the Janus problem). A ShapesWorld can be made to do the same: the prior of a view prompt is
the mixture

    w(y, view) = a * w(y restricted to the view's images) + (1 - a) * w(y, every view)

(both front-biased and normalized), still the exact ideal denoiser of a stated image
distribution. ``azimuth_window`` (360 by default) limits the collection to azimuths within
+-window/2 of the front (the others weigh 0; a view prompt the collection lacks takes only the
second term); a = 1 is a perfectly obeyed view prompt, a = 0 ignores it. ``view_adherence`` is
one a for every view prompt or a mapping from view names to a (unnamed views: 1), e.g. a rarely
photographed back view obeyed less than the front: ``{back: 0.1}``. A collection photographed
facing the face only (``azimuth_window=10``) with the view prompts ignored is the world where
SDS paints faces where the truth has none (``experiment=shapes_janus_front``;
benchmarks/shapes_janus.md).

View conditioning (``view_conditioning``): with ``camera`` (the default) the prior at camera c is

    w(y, c) = a * w(y, view) restricted to the world camera nearest c + (1 - a) * w(y, view)

(``condition_on_views``), the exact prior of the image seen from c where a = 1; with ``prompt``
(SD's case) a view prompt knows the rendering camera only through its bin, and its prior mixes
images seen from up to 45 degrees away. At low noise that mixture pulls a render toward the bin
image nearest it, seen from another camera: under ``prompt`` DSD and SIM miss "a cone" on seeds
where under ``camera`` they reach it (benchmarks/shapes_modes_prompt.md against
benchmarks/shapes_modes.md, rows dsd and sim), so the modes study and the default job use
``camera``. The Janus worlds (``experiment=shapes_janus*``)
keep ``prompt``: their face comes from view prompts that are only partly obeyed.

The multi-view prior (``view_conditioning=multiview``, MVDream's exact analogue; use it with
``camera=multiview``): the data are the world's V-view sets, each class k rendered from all around
at the V cameras of a set (every azimuth, whatever the single-view collection's ``azimuth_window``
/ ``front_bias`` / view prompts), and the V views of a batch set are denoised as one sample,

    p_t(x^1..x^V) = sum_k pi_k prod_v N(x^v; alpha_t x_k(c_v), v_t I)

(``multiview_eps``): one class posterior from the sum of the views' log-likelihoods, each view's
eps its own residual under the shared weights. pi_k is the prompt's class marginal; x_k(c) is class
k's image at the world camera nearest c (``condition_on_views``, which poses the null prompt too).
V is ``views_per_set`` (the camera group's); rows of a call are taken in consecutive sets of V, a
last set of fewer rows being the prior's marginal over that many views (the views are independent
given the class). With V = 1 it is the camera prior with a = 1.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor

from src import checks
from src.backbones.base import Backbone
from src.backbones.shapes_metrics import ExactMetrics
from src.backbones.shapes_render import (
    BOUND_RADIUS,
    LIGHT_DIR,
    MARKER_RADIUS,
    PALETTE,
    RENDERER_VERSION,
    SDFS,
    colorize,
    render_coverage,
)
from src.cache import TensorCache
from src.cameras import VIEW_NAMES, ViewBatch, view_prompt_index, wrap_azimuth
from src.cameras_orbit import make_views, orbit_position
from src.diffusion import alpha_sigma, bcast, sd_alphas_cumprod

ARTICLES = ("a", "an", "the")
# How a view prompt's prior knows the rendering camera: through its bin (SD's four view
# prompts) or the camera itself (ShapesWorld.condition_on_views)
VIEW_CONDITIONING = ("prompt", "camera", "multiview")
ANY_SHAPE = "object"  # "a red object": every shape of that color
DEFAULT_CHUNK = 512  # images per chunk of the online softmax
MIN_RESOLUTION = 8  # pixels: below this the shapes are a few pixels wide
# pixels: the exact prior holds every image in memory (float32 and float64), which grows with the
# square of the resolution: the default 1024 images x 3 x 256^2 values x 12 bytes at this bound
MAX_RESOLUTION = 256
# bytes per pixel channel of the data set in memory: float32 and its float64 copy (_prior_data)
DATA_BYTES = 4 + 8


# ---------------------------------------------------------------------------------------
# the exact prior (functional core)
# ---------------------------------------------------------------------------------------
def mixture_logits(
    x_t: Tensor, alpha: Tensor, var: Tensor, data: Tensor, log_w: Tensor, data_norm2: Tensor | None = None
) -> Tensor:
    """log w_i - ||x_t - alpha x_i||^2 / (2 v); (B, D), (B,), (B,), (n, D), (B, n) -> (B, n).

    data_norm2: optional precomputed ||x_i||^2 (n,)."""
    if data_norm2 is None:
        data_norm2 = (data * data).sum(-1)
    d2 = (
        (x_t * x_t).sum(-1, keepdim=True)
        - 2.0 * alpha[:, None] * (x_t @ data.T)
        + (alpha**2)[:, None] * data_norm2[None, :]
    ).clamp_min(0)
    return log_w - d2 / (2.0 * var[:, None])


def mixture_log_density(
    x_t: Tensor, alpha: Tensor, sigma: Tensor, data: Tensor, weights: Tensor, smoothing: float
) -> Tensor:
    """Closed-form log p_t(x_t) of the weighted mixture (unchunked, for tests); -> (B,)."""
    var = alpha**2 * smoothing**2 + sigma**2
    D = x_t.shape[-1]
    logits = mixture_logits(x_t, alpha, var, data, weights.log())
    return torch.logsumexp(logits, -1) - 0.5 * D * torch.log(2 * torch.pi * var)


def ideal_eps(
    x_t: Tensor,
    alpha: Tensor,
    sigma: Tensor,
    data: Tensor,
    weights: Tensor,
    smoothing: float,
    chunk_size: int | None = DEFAULT_CHUNK,
    data_norm2: Tensor | None = None,
) -> Tensor:
    """Exact epsilon of the noised weighted mixture, chunked over the images.

    x_t: (B, D); alpha, sigma: (B,); data: (N, D) (float64 avoids a copy per chunk);
    weights: (B, N) >= 0, each row summing to 1 (zeros drop images); chunk_size:
    images per chunk (None = all); data_norm2: optional cached ||x_i||^2 (N,).
    Returns (B, D) in float64: eps = sigma (x_t - alpha xbar) / v with
    xbar = softmax-weighted data mean (online softmax: running max m, normaliser S and
    weighted sum X, rescaled by exp(m_old - m_new) whenever the max grows).
    """
    x_t, alpha, sigma = x_t.double(), alpha.double(), sigma.double()
    log_w = weights.double().log()
    var = alpha**2 * smoothing**2 + sigma**2
    active = (weights > 0).any(0).nonzero().squeeze(1)  # skip images no sample can pick
    B, N = x_t.shape[0], active.numel()
    if N == 0:
        raise ValueError("ideal_eps: every weight is zero")
    # a prompt's images are contiguous in the data set: slice instead of gathering
    first = int(active[0])
    contiguous = int(active[-1]) - first + 1 == N
    step = N if chunk_size is None else max(1, int(chunk_size))
    m = torch.full((B, 1), -torch.inf, dtype=torch.float64, device=x_t.device)
    S = torch.zeros(B, 1, dtype=torch.float64, device=x_t.device)
    X = torch.zeros_like(x_t)
    for s in range(0, N, step):
        idx = slice(first + s, first + min(s + step, N)) if contiguous else active[s : s + step]
        xi = data[idx].to(x_t)
        n2 = None if data_norm2 is None else data_norm2[idx].to(x_t)
        logits = mixture_logits(x_t, alpha, var, xi, log_w[:, idx], n2)  # (B, n)
        m_new = torch.maximum(m, logits.max(-1, keepdim=True).values)
        # rows that have seen only zero-weight images so far keep m = -inf: shift by 0
        # there (every p is 0 and S, X stay 0) instead of computing -inf - -inf = nan
        shift = torch.where(torch.isinf(m_new), torch.zeros_like(m_new), m_new)
        scale = torch.exp(m - shift)
        p = torch.exp(logits - shift)
        S = S * scale + p.sum(-1, keepdim=True)
        X = X * scale + p @ xi
        m = m_new
    xbar = X / S
    return (sigma / var)[:, None] * (x_t - alpha[:, None] * xbar)


def multiview_eps(
    x_t: Tensor,
    alpha: Tensor,
    sigma: Tensor,
    data: Tensor,
    weights: Tensor,
    image_class: Tensor,
    smoothing: float,
    views_per_set: int,
    data_norm2: Tensor | None = None,
) -> Tensor:
    """Exact epsilon of the V-view prior (module docstring), float64.

    x_t: (B, D) views, taken in consecutive sets of V = views_per_set (the last set may be
    shorter); alpha, sigma: (B,); data: (N, D); weights: (B, N) >= 0, row b the mixture of view b
    (its sum over class k's images is pi_bk, over one image per class for a posed view);
    image_class: (N,) long. Per view b and class k: log p(x_b | k) = logsumexp over k's images of
    log(w_bi / pi_bk) - ||x_b - alpha x_i||^2 / (2 v); per set s: log r_sk = log pi_sk + sum_b
    log p(x_b | k) + const (pi_sk: the set's mean of pi_bk), r_s = softmax_k; each view's
    xbar_b = sum_i r_s,k(i) p(i | x_b, k(i)) x_i and eps_b = sigma (x_b - alpha xbar_b) / v. Keeps
    x_t's graph (SIM differentiates the prior)."""
    x_t, alpha, sigma = x_t.double(), alpha.double(), sigma.double()
    w = weights.double()
    var = alpha**2 * smoothing**2 + sigma**2
    B, K = x_t.shape[0], int(image_class.max()) + 1
    logits = mixture_logits(x_t, alpha, var, data.to(x_t), w.log(), data_norm2)  # (B, N)
    cls = image_class.to(x_t.device).expand(B, -1)
    # per-class logsumexp, shifted by each class's own max (a class far from x_b keeps its value)
    m = torch.full((B, K), -torch.inf, dtype=x_t.dtype, device=x_t.device)
    m = m.scatter_reduce(1, cls, logits.detach(), "amax")
    m = torch.where(torch.isinf(m), torch.zeros_like(m), m)
    p = torch.exp(logits - m.gather(1, cls))  # (B, N), 0 where w = 0
    Z = torch.zeros(B, K, dtype=x_t.dtype, device=x_t.device).scatter_add(1, cls, p)
    pi = torch.zeros(B, K, dtype=x_t.dtype, device=x_t.device).scatter_add(1, cls, w)
    present = pi > 0
    log_lik = torch.where(present, Z.clamp_min(1e-300).log() + m - pi.clamp_min(1e-300).log(), -torch.inf)
    set_id = (torch.arange(B, device=x_t.device) // int(views_per_set))
    S = int(set_id[-1]) + 1
    J = torch.zeros(S, K, dtype=x_t.dtype, device=x_t.device).index_add(0, set_id, log_lik)
    n = torch.zeros(S, dtype=x_t.dtype, device=x_t.device).index_add(0, set_id, torch.ones_like(alpha))
    pi_set = torch.zeros(S, K, dtype=x_t.dtype, device=x_t.device).index_add(0, set_id, pi) / n[:, None]
    r = torch.softmax(J + pi_set.log(), dim=1)  # (S, K) the shared class posterior
    rho = r[set_id].gather(1, cls) * p / Z.gather(1, cls).clamp_min(1e-300)  # (B, N)
    xbar = rho @ data.to(x_t)
    return (sigma / var)[:, None] * (x_t - alpha[:, None] * xbar)


# ---------------------------------------------------------------------------------------
# prompts
# ---------------------------------------------------------------------------------------
def parse_prompt(
    text: str, shapes: Sequence[str], colors: Sequence[str]
) -> tuple[str | None, str | None, str | None]:
    """(shape, color, view) of a prompt, None = any; unknown words raise ValueError.

    "a red cube" -> ("cube", "red", None); "a cone, back view" -> ("cone", None, "back").
    """
    vocab = vocabulary(shapes, colors)
    clean = text.strip().lower().rstrip(".")
    if clean == "":
        return None, None, None
    head, *tails = [p.strip() for p in clean.split(",")]
    shape = color = view = None
    unknown: list[str] = []
    for w in head.split():
        if w in ARTICLES or w == ANY_SHAPE:
            continue
        if w in shapes:
            if shape is not None:
                raise ValueError(f"prompt {checks.echo(text)} names two shapes; {vocab}")
            shape = w
        elif w in colors:
            if color is not None:
                raise ValueError(f"prompt {checks.echo(text)} names two colors; {vocab}")
            color = w
        else:
            unknown.append(w)
    for tail in tails:
        words = tail.split()
        if len(words) == 2 and words[0] in VIEW_NAMES and words[1] == "view" and view is None:
            view = words[0]
        else:
            unknown.append(tail)
    if unknown:
        raise ValueError(f"unknown words {checks.echo(unknown)} in prompt {checks.echo(text)}; {vocab}")
    return shape, color, view


def vocabulary(shapes: Sequence[str], colors: Sequence[str]) -> str:
    views = " | ".join(f"'<prompt>, {v} view'" for v in VIEW_NAMES)
    return (
        "ShapesWorld vocabulary: "
        f"articles: {', '.join(ARTICLES)}; colors: {', '.join(colors)}; "
        f"shapes: {', '.join(shapes)} (or '{ANY_SHAPE}'); views: {views}; "
        "grammar: '[a] [color] shape[, <view> view]', '' = every image"
    )


# ---------------------------------------------------------------------------------------
# the dataset: rendering and on-disk cache
# ---------------------------------------------------------------------------------------
CACHE_SUB = "shapes"  # <DISTILLERY_CACHE>/shapes (src/cache.py)


class ShapesWorld(ExactMetrics, Backbone):
    """The analytic ``shapes`` backbone (see the module docstring for the math).

    Images are indexed i = (shape * n_colors + color) * n_views + view, views ordered
    elevation-major then azimuth (azimuths 0, 360/n, ...). Class id = shape * n_colors
    + color.
    """

    space = "pixel"
    supported_representations = ("image", "3d")

    def __init__(
        self,
        shapes: Sequence[str] = ("sphere", "cube", "cylinder", "cone"),
        colors: Sequence[str] = ("red", "green", "blue", "yellow"),
        resolution: int = 32,
        n_azimuths: int = 16,
        elevation_range: Sequence[float] = (0.0, 75.0),
        n_elevations: int = 4,
        distance: float = 2.0,
        fovy_deg: float = 40.0,
        background: Sequence[float] = (1.0, 1.0, 1.0),
        light_dir: Sequence[float] = LIGHT_DIR,
        marker: bool = False,
        marker_radius: float = MARKER_RADIUS,
        front_bias: float = 0.0,
        azimuth_window: float = 360.0,
        view_adherence: float | Mapping[str, float] = 1.0,
        view_conditioning: str = "camera",
        views_per_set: int = 1,
        smoothing: float = 0.02,
        supersample: int = 2,
        precision_threshold: float = 0.06,
        eval_elevation_deg: float = 25.0,
        chunk_size: int = DEFAULT_CHUNK,
        default_prompt: str = "a red cube",
        cache: bool = True,
        verbose: bool = False,
    ):
        super().__init__()
        self.shapes, self.colors = tuple(shapes), tuple(colors)
        self.resolution = int(resolution)
        self.n_azimuths, self.n_elevations = int(n_azimuths), int(n_elevations)
        self.elevation_range = tuple(float(e) for e in elevation_range)
        self.distance, self.fovy_deg = float(distance), float(fovy_deg)
        self.light_dir = tuple(float(v) for v in light_dir)
        self.marker, self.front_bias = bool(marker), float(front_bias)
        self.marker_radius = float(marker_radius)
        self.azimuth_window = float(azimuth_window)
        # one a for every view prompt, or one per view name (views not named: 1, obeyed)
        per_view = view_adherence if isinstance(view_adherence, Mapping) else dict.fromkeys(VIEW_NAMES, view_adherence)
        self.view_adherence = {v: float(per_view.get(v, 1.0)) for v in VIEW_NAMES}
        self.view_conditioning = view_conditioning
        self.views_per_set = int(views_per_set)  # V of view_conditioning=multiview
        self.smoothing, self.supersample = float(smoothing), int(supersample)
        self.precision_threshold = float(precision_threshold)
        self.eval_elevation_deg = float(eval_elevation_deg)
        self.chunk_size = int(chunk_size)
        self.default_prompt = default_prompt
        self.register_buffer("alphas_cumprod", sd_alphas_cumprod())
        self.register_buffer("background", torch.tensor(list(background), dtype=torch.float32), persistent=False)
        self.register_buffer(
            "palette", torch.tensor([PALETTE[c] for c in self.colors], dtype=torch.float32), persistent=False
        )
        self.marker_axes = ((1.0, 0.0, 0.0),) if self.marker else ()

        views = self.world_views()
        V, C = len(views), len(self.colors)
        shape_idx = torch.arange(len(self.shapes)).repeat_interleave(C * V)
        color_idx = torch.arange(C).repeat_interleave(V).repeat(len(self.shapes))
        view_id = torch.arange(V).repeat(len(self.shapes) * C)
        self.register_buffer("shape_idx", shape_idx, persistent=False)
        self.register_buffer("color_idx", color_idx, persistent=False)
        self.register_buffer("class_idx", shape_idx * C + color_idx, persistent=False)
        self.register_buffer("azimuth_deg", views.azimuth_deg[view_id], persistent=False)
        self.register_buffer("elevation_deg", views.elevation_deg[view_id], persistent=False)
        self.register_buffer("image_view_idx", views.view_idx[view_id], persistent=False)
        # front bias: von Mises weight over azimuth (kappa = 0 is uniform)
        view_w = torch.exp(self.front_bias * torch.cos(torch.deg2rad(self.azimuth_deg.double())))
        # a collection photographed only within +-window/2 of the front: the others weigh 0
        view_w = view_w * (wrap_azimuth(self.azimuth_deg.double()).abs() <= self.azimuth_window / 2 + 1e-6)
        self.register_buffer("view_weight", view_w.float(), persistent=False)

        # The image set is rendered (or loaded) on first use, so that a bad prompt fails at
        # once with the vocabulary instead of after the rendering.
        self._cache, self._verbose = bool(cache), bool(verbose)
        self.cache_hit, self.cache_path, self.render_seconds = False, None, 0.0
        self.register_buffer("_data", None, persistent=False)
        self._data64: tuple[Tensor, Tensor] | None = None  # float64 copy + norms (_prior_data)

    @classmethod
    def check_prompt(cls, cfg, prompt):
        parse_prompt(prompt, list(cfg.get("shapes") or []), list(cfg.get("colors") or []))

    @classmethod
    def check_composition(cls, cfg, key, root):
        """Renders must be the data set's size: the prior is exact at backbone.resolution only
        (the camera group follows it unless set by hand; an image representation's null size
        means the same)."""
        from hydra.utils import get_class

        res = cfg.get("resolution")
        n = (len(cfg.get("shapes") or []) * len(cfg.get("colors") or []) * int(cfg.get("n_azimuths") or 1)
             * int(cfg.get("n_elevations") or 1))
        checks.fits_memory(f"{key}.n_azimuths", cfg.get("n_azimuths"), n * res * res * 3 * DATA_BYTES,
                           f"its {n} images at {res} px (float32 and the float64 copy)",
                           str(root.get("device")))
        rep = get_class(str(root.representation._target_))
        where = {"3d": ("camera", root.get("camera") or {}), "image": ("representation", root.representation)}
        group, node = where.get(rep.kind, (None, {}))
        for side in ("height", "width"):
            value = node.get(side) if group else None
            if group == "representation" and value is None:
                continue
            if group is not None:
                checks.require(value == res, f"{group}.{side}", value,
                               f"ShapesWorld renders are {key}.resolution={res} px square: set "
                               f"{group}.{side}={res} (or change {key}.resolution)")

    @classmethod
    def check_config(cls, cfg, key):
        for name, known in (("shapes", SDFS), ("colors", PALETTE)):
            values = list(cfg.get(name) or [])
            checks.require(len(values) > 0 and all(v in known for v in values), f"{key}.{name}", values,
                           f"a non-empty list of {', '.join(known)}")
        checks.number(cfg, "resolution", f"{key}.resolution", lo=MIN_RESOLUTION, hi=MAX_RESOLUTION, integer=True)
        for name in ("n_azimuths", "n_elevations", "supersample", "chunk_size"):
            checks.number(cfg, name, f"{key}.{name}", lo=1, integer=True)
        lo_el, hi_el = (list(cfg.get("elevation_range")) + [None, None])[:2]
        checks.require(lo_el is not None and hi_el is not None and -90 <= float(lo_el) <= float(hi_el) <= 90,
                       f"{key}.elevation_range", cfg.get("elevation_range"), "[low, high] within [-90, 90]")
        checks.number(cfg, "distance", f"{key}.distance", lo=0.0, lo_open=True)
        checks.number(cfg, "fovy_deg", f"{key}.fovy_deg", lo=0.0, hi=180.0, lo_open=True, hi_open=True)
        checks.number(cfg, "smoothing", f"{key}.smoothing", lo=0.0)
        light = list(cfg.get("light_dir", LIGHT_DIR) or [])
        checks.require(len(light) == 3 and all(isinstance(v, (int, float)) for v in light)
                       and any(float(v) != 0.0 for v in light),
                       f"{key}.light_dir", cfg.get("light_dir"), "3 numbers, not all zero (towards the light)")
        checks.number(cfg, "front_bias", f"{key}.front_bias")
        checks.number(cfg, "azimuth_window", f"{key}.azimuth_window", lo=0.0, hi=360.0, lo_open=True)
        # a disc across the +x axis; beyond the largest shape's half-width it would wrap the object
        checks.number(cfg, "marker_radius", f"{key}.marker_radius", lo=0.0, hi=BOUND_RADIUS, lo_open=True)
        adherence = cfg.get("view_adherence", 1.0)
        if isinstance(adherence, Mapping):
            unknown = sorted(set(adherence) - set(VIEW_NAMES))
            checks.require(not unknown, f"{key}.view_adherence", dict(adherence),
                           f"a number in [0, 1] or a mapping of view names ({', '.join(VIEW_NAMES)}) to one")
            for v in adherence:
                checks.probability(adherence, v, f"{key}.view_adherence.{v}")
        else:
            checks.probability(cfg, "view_adherence", f"{key}.view_adherence")
        checks.number(cfg, "precision_threshold", f"{key}.precision_threshold", lo=0.0, lo_open=True)
        checks.choice(cfg, "view_conditioning", f"{key}.view_conditioning", VIEW_CONDITIONING)
        checks.number(cfg, "views_per_set", f"{key}.views_per_set", lo=1, integer=True, optional=True)

    @property
    def data(self) -> Tensor:
        """The image set flattened for the prior, (N, 3 * H * W) in [-1, 1] (channel-first)."""
        if self._data is None:
            t0 = time.perf_counter()
            images, self.cache_hit, self.cache_path = self._dataset(self.world_views(), self._cache)
            self.render_seconds = time.perf_counter() - t0
            if self._verbose:
                how = "cache hit" if self.cache_hit else "rendered"
                print(f"ShapesWorld: {images.shape[0]} images, {how} in {self.render_seconds:.2f}s ({self.cache_path})")
            flat = (2.0 * images - 1.0).permute(0, 3, 1, 2).reshape(images.shape[0], -1)
            self._data = flat.contiguous().to(self.alphas_cumprod.device)
        return self._data

    def _prior_data(self) -> tuple[Tensor, Tensor]:
        """float64 copy of the data set and its squared norms (N,), cached per device:
        the prior runs in float64 (logits reach ~1e5 at small t) without a copy per call."""
        data = self.data
        cached = self._data64
        if cached is None or cached[0].device != data.device:
            d64 = data.double()
            cached = (d64, (d64 * d64).sum(-1))
            self._data64 = cached
        return cached

    # --- world --------------------------------------------------------------------------
    def world_views(self) -> ViewBatch:
        """The data cameras: elevation-major grid, azimuths 0, 360/n, ... wrapped to (-180, 180]."""
        az = torch.arange(self.n_azimuths, dtype=torch.float32) * (360.0 / self.n_azimuths)
        az = torch.where(az > 180.0, az - 360.0, az)
        lo, hi = self.elevation_range
        el = torch.linspace(lo, hi, self.n_elevations) if self.n_elevations > 1 else torch.tensor([lo])
        az_g, el_g = az.repeat(len(el)), el.repeat_interleave(len(az))
        n = az_g.numel()
        return make_views(
            az_g, el_g, torch.full((n,), self.distance), torch.full((n,), self.fovy_deg),
            self.resolution, self.resolution,
        )

    @property
    def n_views(self) -> int:
        return self.n_azimuths * self.n_elevations

    @property
    def n_classes(self) -> int:
        return len(self.shapes) * len(self.colors)

    def class_name(self, class_id: int) -> str:
        if class_id < 0:
            return "none"
        s, c = divmod(int(class_id), len(self.colors))
        return f"{self.colors[c]} {self.shapes[s]}"

    def world_spec(self) -> dict:
        """Everything that changes the rendered pixels (the cache entry's key)."""
        spec = {
            "v": RENDERER_VERSION, "shapes": self.shapes,
            "colors": [PALETTE[c] for c in self.colors], "res": self.resolution,
            "az": self.n_azimuths, "el": list(self.elevation_range), "nel": self.n_elevations,
            "d": self.distance, "fov": self.fovy_deg, "bg": self.background.tolist(),
            "marker": self.marker_axes, "ss": self.supersample, "light": list(self.light_dir),
        }
        if self.marker and self.marker_radius != MARKER_RADIUS:  # default worlds keep their key
            spec["marker_radius"] = self.marker_radius
        return spec

    def world_key(self) -> str:
        """Hash of world_spec (the cache file's name)."""
        return hashlib.sha256(json.dumps(self.world_spec(), sort_keys=True).encode()).hexdigest()[:16]

    def render_classes(
        self, class_ids: Sequence[int], views: ViewBatch, height: int | None = None,
        width: int | None = None, markers: Sequence[Sequence[float]] | None = None,
    ) -> Tensor:
        """Render classes at the given cameras; -> (K, B, H, W, 3) in [0, 1] (K = len(class_ids))."""
        markers = self.marker_axes if markers is None else markers
        out: dict[int, Tensor] = {}
        by_shape: dict[int, list[int]] = {}
        for k in class_ids:
            by_shape.setdefault(int(k) // len(self.colors), []).append(int(k))
        for s, ks in by_shape.items():
            cov = render_coverage(self.shapes[s], views, height, width, markers, self.supersample,
                                  light_dir=self.light_dir, marker_radius=self.marker_radius)
            for k in ks:
                out[k] = colorize(cov, self.palette[k % len(self.colors)], self.background)
        return torch.stack([out[int(k)] for k in class_ids])

    def truth_coverage(self, class_id: int, views: ViewBatch, height: int, width: int) -> Tensor:
        """The truth's per-pixel coverage at each view (``render_coverage``: albedo, marker,
        background weights and marker); -> (B, H, W, 4)."""
        return render_coverage(
            self.shapes[int(class_id) // len(self.colors)], views, height, width,
            self.marker_axes, self.supersample, light_dir=self.light_dir, marker_radius=self.marker_radius,
        )

    def _dataset(self, views: ViewBatch, cache: bool) -> tuple[Tensor, bool, Path | None]:
        """The rendered data set (N, H, W, 3), from the verified cache (src/cache.py) when an
        intact entry of this world is there; a damaged or foreign one is re-rendered."""
        store = TensorCache(CACHE_SUB) if cache else None
        name, key = f"{self.world_key()}.pt", self.world_spec()
        shape = (self.n_classes * len(views), self.resolution, self.resolution, 3)
        path = store.path(name) if store is not None else None
        imgs = store.load(name, key, shape, torch.float32) if store is not None else None
        if imgs is not None:
            return imgs, True, path
        imgs = self.render_classes(range(self.n_classes), views)  # (K, V, H, W, 3)
        imgs = imgs.reshape(-1, *imgs.shape[2:]).contiguous()
        if store is not None:
            store.save(name, imgs, key)
        return imgs, False, path

    # --- images <-> backbone space ----------------------------------------------------------
    def encode(self, rgb: Tensor) -> Tensor:
        """(B, H, W, 3) in [0, 1] -> (B, 3, H, W) in [-1, 1], keeping the graph."""
        return rgb.permute(0, 3, 1, 2) * 2.0 - 1.0

    def decode(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, H, W, 3) in [0, 1]."""
        return ((x + 1.0) * 0.5).permute(0, 2, 3, 1)

    def images(self) -> Tensor:
        """The data set, (N, H, W, 3) in [0, 1]."""
        R = self.resolution
        return self.decode(self.data.reshape(-1, 3, R, R))

    @torch.no_grad()
    def prior_samples(self, prompt: str, n: int | None = None, generator: torch.Generator | None = None,
                      resolution: int | None = None, **_) -> Tensor:
        """The prior's own images of ``prompt``, (N, R, R, 3) in [0, 1], rendered by the world's
        renderer at the data cameras at ``resolution`` (default the world's): p(x | y) is this
        set (up to the smoothing s). With uniform view weights (front_bias 0) and ``n`` None,
        all of them; otherwise ``n`` (default: their number) drawn with the prior's weights."""
        mask = self.prompt_mask(prompt).cpu()
        idx = mask.nonzero()[:, 0]
        w = self.embed(prompt).cpu()[idx].double()
        if n is not None or bool((w != w[0]).any()):
            k = len(idx) if n is None else int(n)
            idx = idx[torch.multinomial(w, k, replacement=True, generator=generator)]
        R = int(resolution or self.resolution)
        views = self.world_views()
        out = []
        for cls in sorted(set(self.class_idx.cpu()[idx].tolist())):
            sel = idx[self.class_idx.cpu()[idx] == cls]
            vid = sel % self.n_views  # image i = class * n_views + view
            out.append(self.render_classes([cls], views.select(vid), R, R)[0])
        return torch.cat(out).float()

    # --- text ----------------------------------------------------------------------------
    def vocabulary(self) -> str:
        return vocabulary(self.shapes, self.colors)

    def prompt_mask(self, text: str, use_view: bool = True) -> Tensor:
        """(N,) bool: the images a prompt describes (raises on unknown words / no match)."""
        shape, color, view = parse_prompt(text, self.shapes, self.colors)
        mask = torch.ones_like(self.shape_idx, dtype=torch.bool)
        if shape is not None:
            mask &= self.shape_idx == self.shapes.index(shape)
        if color is not None:
            mask &= self.color_idx == self.colors.index(color)
        if view is not None and use_view:
            mask &= self.image_view_idx == VIEW_NAMES.index(view)
        if not mask.any():
            raise ValueError(
                f"prompt {checks.echo(text)} matches no image of this world (elevations "
                f"{list(self.elevation_range)} x {self.n_azimuths} azimuths); {self.vocabulary()}"
            )
        return mask

    def prompt_classes(self, text: str) -> list[int]:
        """Class ids a prompt describes, ignoring its view suffix."""
        return sorted(set(self.class_idx[self.prompt_mask(text, use_view=False)].tolist()))

    def class_distribution(self, text: str) -> Tensor:
        """p(class | prompt) of the prior, (n_classes,) float64 summing to 1: the prompt's
        weights w(y) summed per class (what a sweep's seeds should reach; e.g. "a cone": the
        four cones at 1/4 each). Renders nothing."""
        w = self.embed(text).double().cpu()
        return torch.zeros(self.n_classes, dtype=torch.float64).index_add_(0, self.class_idx.cpu(), w)

    def embed(self, text: str) -> Tensor:
        """Mixture weights w(y) over the data set, (N,) float32 summing to 1; a view prompt
        mixes its view's images with every view by ``view_adherence`` (module docstring)."""
        def weights(use_view: bool) -> Tensor:
            w = self.prompt_mask(text, use_view=use_view).double() * self.view_weight.double()
            return w / w.sum()

        view = parse_prompt(text, self.shapes, self.colors)[2]
        a = 1.0 if view is None else self.view_adherence[view]
        in_collection = self.prompt_mask(text).double() @ self.view_weight.double() > 0
        if not in_collection:  # e.g. the back view of a front-only collection (azimuth_window)
            if a == 1.0:
                raise ValueError(
                    f"prompt {checks.echo(text)} has no image in the collection (backbone.azimuth_window="
                    f"{self.azimuth_window:g}); a view it lacks cannot be obeyed: set "
                    f"backbone.view_adherence.{view} < 1 (its prior is then the prompt's every view)")
            return weights(False).float()  # nothing of the view to mix in
        w = weights(True)
        if a < 1.0:
            w = a * w + (1.0 - a) * weights(False)
        return w.float()

    def condition_on_views(self, emb: Tensor, views: ViewBatch, null: bool = False) -> Tensor:
        """``view_conditioning=camera``: the view prompt's prior at camera c is a * (its images
        at the world camera nearest c) + (1 - a) * (the view prompt's prior), a = the adherence
        of c's view (a prior that knows the camera, obeying it as much as its view prompt; with
        a = 1 the exact prior of the image seen from c). ``prompt``: the view prompt's prior.
        ``multiview``: each class's image at the world camera nearest c, weighted by the prompt's
        class marginal (whatever its view prompt); the null prompt too (``null``)."""
        if self.view_conditioning == "prompt" or views.azimuth_deg is None:
            return emb
        if self.view_conditioning == "multiview":
            return self._pose(emb, self._nearest_camera(views, torch.ones_like(emb, dtype=torch.bool)))
        if null:
            return emb
        nearest = self._nearest_camera(views, emb > 0)  # the nearest camera among the prompt's images
        at_cam = emb * nearest
        at_cam = at_cam / at_cam.sum(1, keepdim=True)
        adherence = torch.tensor([self.view_adherence[v] for v in VIEW_NAMES], device=emb.device)
        a = adherence[view_prompt_index(views.azimuth_deg, views.elevation_deg).to(emb.device)][:, None]
        return a * at_cam + (1.0 - a) * emb

    def _nearest_camera(self, views: ViewBatch, allowed: Tensor) -> Tensor:
        """(B, N) bool: image i is at the camera nearest view b's among the ``allowed`` images."""
        def direction(az: Tensor, el: Tensor) -> Tensor:  # unit camera directions (..., 3)
            az, el = az.double(), el.double()
            return orbit_position(az, el, torch.ones_like(az))

        own = direction(self.azimuth_deg, self.elevation_deg)  # (N, 3) each image's camera
        cam = direction(views.azimuth_deg.to(own.device), views.elevation_deg.to(own.device))  # (B, 3)
        cos = (cam @ own.T).masked_fill(~allowed.to(own.device), -2.0)
        return cos >= cos.max(dim=1, keepdim=True).values - 1e-6

    def _pose(self, emb: Tensor, nearest: Tensor) -> Tensor:
        """Weights pi_k(emb) / (k's images in ``nearest``) on those images (B, N): a view's
        multi-view mixture, one image per class unless two world cameras are equally near."""
        B, N = emb.shape
        cls = self.class_idx.to(emb.device).expand(B, N)
        zeros = torch.zeros(B, self.n_classes, dtype=torch.float64, device=emb.device)
        pi = zeros.scatter_add(1, cls, emb.double())  # the prompt's class marginal
        count = zeros.scatter_add(1, cls, nearest.double().to(emb.device))
        return (pi.gather(1, cls) * nearest.to(emb.device) / count.gather(1, cls)).to(emb.dtype)

    # --- the model -------------------------------------------------------------------------
    def predict_eps(self, x_t: Tensor, t: Tensor, emb: Tensor, chunk_size: int | None = None) -> Tensor:
        """Exact eps of p_t(x_t | y); (B, 3, H, W), (B,), (B, N) -> (B, 3, H, W) in x_t's dtype."""
        if x_t.shape[1:] != (3, self.resolution, self.resolution):
            raise ValueError(
                f"ShapesWorld is {self.resolution}px: got x_t of shape {tuple(x_t.shape)}, "
                f"expected (B, 3, {self.resolution}, {self.resolution})"
            )
        alpha, sigma = alpha_sigma(self.alphas_cumprod, t.long())
        data, norm2 = self._prior_data()
        if self.view_conditioning == "multiview":
            eps = multiview_eps(x_t.reshape(x_t.shape[0], -1), alpha, sigma, data, emb.to(x_t.device),
                                self.class_idx, self.smoothing, self.views_per_set, norm2)
            return eps.reshape(x_t.shape).to(x_t.dtype)
        eps = ideal_eps(
            x_t.reshape(x_t.shape[0], -1), alpha, sigma, data, emb.to(x_t.device),
            self.smoothing, self.chunk_size if chunk_size is None else chunk_size, norm2,
        )
        return eps.reshape(x_t.shape).to(x_t.dtype)

    def x0_mean(self, x_t: Tensor, t: Tensor, emb: Tensor) -> Tensor:
        """E[x_0 | x_t] of the smoothed mixture (Tweedie); for logs and tests."""
        alpha, sigma = alpha_sigma(self.alphas_cumprod, t.long())
        eps = self.predict_eps(x_t, t, emb)
        return (x_t - bcast(sigma, x_t) * eps) / bcast(alpha, x_t)


__all__ = ["ShapesWorld", "ideal_eps", "mixture_log_density", "multiview_eps", "parse_prompt", "vocabulary"]
