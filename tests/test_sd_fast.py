"""The fast path on the CPU (docs/stable_diffusion.md "Fast path"): everything but the CUDA graphs.

On the CPU ``backbone.fast=true`` keeps the fused calls (prior + psi in one UNet call, DSD's
e_t / e_td in one) and runs the graphs' eager twins, so the math of the fast path is tested here
against the eager reference in float32, where the only difference is the batch a row is computed
in (round-off, ~1e-7 relative). tests/test_sd_cuda.py compares the CUDA graphs on a GPU.
"""

from __future__ import annotations

import copy
import logging
import os

import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"

from src.backbones.graphs import GraphCache, rel_diff  # noqa: E402
from src.configs import guidance_names  # noqa: E402
from tests.helpers import one_thread  # noqa: F401  (autouse fixture)
from tests.test_sd import _compose, _latents, _psi, _views, make_backbone, write_tiny_sd  # noqa: E402

# float32 on the CPU: the fused and separate calls run the same kernels on different batch
# sizes (oneDNN picks per batch): round-off. Measured (2-core CPU, torch 2.14): single calls
# <= 3e-7, G <= 6.2e-6 (ESD: CFG's 7.5 x a difference of two close predictions), 0 where no call
# is fused (SDS, FSD, SSD, CSD). 5e-5 is 8x the largest.
FP32_RTOL = 5e-5




@pytest.fixture(scope="module")
def tiny_repo(tmp_path_factory):
    return write_tiny_sd(tmp_path_factory.mktemp("tiny-sd-fast"))


def _perturb_psi(psi, seed: int = 0, std: float = 0.05) -> None:
    """Move LoRA B and the camera MLP's output layer off their zero init (psi != prior)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in psi._lora.items():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * std)
        for p in psi.camera[2].parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)


# --- one UNet call for the prior and psi ------------------------------------------------------
def test_joint_call_equals_separate_calls(tiny_repo):
    bb = make_backbone(tiny_repo)
    psi = _psi(bb, rank=2)
    _perturb_psi(psi)
    B = 2
    x, views = _latents(bb, B), _views(B)
    t = torch.tensor([120, 640])
    c = bb.conditioning("a lion", "blurry")
    emb, null = c.select(torch.zeros(B, dtype=torch.long)), c.null(B)
    psi_emb = bb.embed("a lion").expand(B, -1, -1)
    zero = torch.zeros(B, 16)
    rows = psi.joint_eps(torch.cat([x] * 4), torch.cat([t] * 4), torch.cat([emb, null, psi_emb, psi_emb]),
                         torch.cat([zero, zero, views.cam, zero]), torch.tensor([0.0] * 2 * B + [1.0] * 2 * B))
    want = [bb.predict_eps(x, t, emb), bb.predict_eps(x, t, null), psi.eps(x, t, views.cam, psi_emb),
            psi.eps(x, t, None, psi_emb)]
    diffs = [rel_diff(got, ref) for got, ref in zip(rows.split(B), want)]
    print("joint vs separate calls, relative:", ", ".join(f"{d:.2g}" for d in diffs))
    assert max(diffs) < FP32_RTOL
    assert rel_diff(want[2], want[0]) > 1e-2  # psi really differs from the prior here
    # the masked rows left psi's state alone: a plain prior call is still the base UNet
    assert psi._row_mask is None and psi._cam_emb is None


def test_joint_call_gradient_through_the_input_equals_separate_calls(tiny_repo):
    """SIM differentiates both networks through x_t: the one-call gradient is the same."""
    bb = make_backbone(tiny_repo)
    psi = _psi(bb, rank=2)
    _perturb_psi(psi, seed=1)
    B = 2
    x0, views = _latents(bb, B, seed=3), _views(B)
    t = torch.tensor([300, 800])
    c = bb.conditioning("a lion", "")
    emb, null = c.select(torch.zeros(B, dtype=torch.long)), c.null(B)
    psi_emb = bb.embed("a lion").expand(B, -1, -1)
    w = torch.randn(3 * B, *x0.shape[1:], generator=torch.Generator().manual_seed(0))

    x = x0.clone().requires_grad_(True)
    e = psi.joint_eps(torch.cat([x] * 3), torch.cat([t] * 3), torch.cat([emb, null, psi_emb]),
                      torch.cat([torch.zeros(2 * B, 16), views.cam]), torch.tensor([0.0] * 2 * B + [1.0] * B))
    (g_joint,) = torch.autograd.grad((w * e).sum(), x)

    x = x0.clone().requires_grad_(True)
    e = torch.cat([bb.predict_eps(x, t, emb), bb.predict_eps(x, t, null), psi.eps(x, t, views.cam, psi_emb)])
    (g_sep,) = torch.autograd.grad((w * e).sum(), x)
    print("joint vs separate input gradient, relative:", f"{rel_diff(g_joint, g_sep):.2g}")
    assert rel_diff(g_joint, g_sep) < FP32_RTOL


@pytest.mark.parametrize("method,lam", [("vsd", None), ("esd", 0.0), ("esd", 0.5), ("esd", 1.0), ("sim", None)])
def test_estimators_one_backbone_call_equals_separate_calls(method, lam, tiny_repo, tmp_path):
    """The one call of VSD / ESD (``Backbone.eps_with_psi``) and SIM (``eps_pair_with_psi``,
    differentiated through x_t): on the fast path ONE UNet call of (2 + len(cams)) B rows that
    equals the separate calls; on the eager path the separate calls themselves, bit for bit (psi's
    cameras in one call of its own where there are two, ESD at lam 0.5)."""
    extra = [] if lam is None else [f"guidance.lam={lam}"]
    tr = _trainer(tiny_repo, tmp_path, method, True, extra)
    g, bb = tr.c.guidance, tr.c.backbone
    _perturb_psi(g.psi, seed=2)
    B = 2
    x_t, views, t = _latents(bb, B, seed=5), _views(B, seed=5), torch.tensor([120, 640])
    cams = {"vsd": lambda: [views.cam], "esd": lambda: g.psi_cams(views), "sim": lambda: [g.psi_cam(views)]}[method]()
    assert len(cams) == (2 if lam == 0.5 else 1)
    emb, null = g.text(views)
    psi_emb = g.psi_text(B)
    w = torch.randn(3, B, *x_t.shape[1:], generator=torch.Generator().manual_seed(6))
    calls = []
    hook = bb.unet.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))

    def one_call(fast: bool):
        """The estimator's call: ([e_s] or [e_c, e_u], [e_psi per camera], SIM's input gradient)."""
        bb.fast = fast
        calls.clear()
        if method != "sim":
            with torch.no_grad():
                e, e_psi = bb.eps_with_psi(x_t, t, emb, null, g.scale, g.psi, psi_emb, cams)
            return [e], e_psi, None
        z = x_t.clone().requires_grad_(True)
        e_c, e_u, e_psi = bb.eps_pair_with_psi(z, t, emb, null, g.psi, psi_emb, cams)
        return [e_c, e_u], e_psi, torch.autograd.grad((w[0] * e_c + w[1] * e_u + w[2] * e_psi[0]).sum(), z)[0]

    def separate():
        """The calls as each formula is written, eager; psi's first (SIM's reference order)."""
        bb.fast = False
        if method != "sim":
            with torch.no_grad():
                e_psi = [g.psi.eps(x_t, t, c, psi_emb) for c in cams]
                return [bb.eps(x_t, t, emb, null, g.scale)], e_psi, None
        z = x_t.clone().requires_grad_(True)
        e_q = g.psi.eps(z, t, cams[0], psi_emb)
        e_c, e_u = bb.eps_pair(z, t, emb, null)
        return [e_c, e_u], [e_q], torch.autograd.grad((w[0] * e_c + w[1] * e_u + w[2] * e_q).sum(), z)[0]

    ref = separate()
    fast = one_call(True)
    assert calls == [(2 + len(cams)) * B]  # one UNet call: cond, null and psi's rows
    eager = one_call(False)
    hook.remove()
    assert calls == [len(cams) * B, 2 * B]  # eager: psi's call (its cameras batched), the prior's pair
    pairs = [*zip(fast[0], ref[0]), *zip(fast[1], ref[1])] + ([(fast[2], ref[2])] if method == "sim" else [])
    diffs = [rel_diff(a, b) for a, b in pairs]
    print(method, lam, "one call vs separate calls, relative:", ", ".join(f"{d:.2g}" for d in diffs))
    assert max(diffs) < FP32_RTOL
    assert rel_diff(ref[1][0], bb.predict_eps(x_t, t, psi_emb)) > 1e-2  # psi really differs from the prior
    for a, b in [*zip(eager[0], ref[0])] + ([(eager[2], ref[2])] if method == "sim" else []):
        assert torch.equal(a, b)
    for a, b in zip(eager[1], ref[1]):  # ESD at lam 0.5: psi's two cameras in one call of 2B
        assert torch.equal(a, b) if len(cams) == 1 else rel_diff(a, b) < FP32_RTOL


# --- every method: fast (fused, graphs' eager twins on the CPU) vs the eager reference ----------
def _trainer(repo, tmp_path, method: str, fast: bool, extra=()):
    from src.trainer import Trainer

    cfg = _compose([
        "backbone=diffusers", f"backbone.path={repo}", "backbone.dtype=float32", f"backbone.fast={str(fast).lower()}",
        f"backbone.embedding_cache={tmp_path / 'emb'}", "representation=image", f"guidance={method}",
        "prompt=a ceramic lion", "device=cpu", "trainer.max_steps=4", "trainer.progress=false",
        "trainer.export=false", "score_model.lr=1e-2", *extra,
    ])
    return Trainer(cfg, tmp_path / f"{method}_{fast}")


@pytest.mark.parametrize("method", guidance_names())
def test_fast_guidance_equals_eager(method, tiny_repo, tmp_path):
    """G of the fast path = G of the eager path, at step 0, after psi's update (its in-place AdamW
    step), and after a resume (load_state_dict into a fast guidance that already ran)."""
    eager, fast = (_trainer(tiny_repo, tmp_path, method, f) for f in (False, True))
    assert fast.c.backbone.fast and not eager.c.backbone.fast
    ge, gf = eager.c.guidance, fast.c.guidance
    gf.load_state_dict(copy.deepcopy(ge.state_dict()))  # one starting psi for both
    x = eager.c.representation.render(eager.c.cameras.sample(0, torch.Generator().manual_seed(0))).x.detach()
    diffs = []
    for step in range(3):
        views = eager.c.cameras.sample(step, torch.Generator().manual_seed(step))
        if step == 2 and ge.psi is not None:  # resume: a state that differs visibly from the current
            state = copy.deepcopy(ge.state_dict())
            for k, v in state.items():
                if k.endswith("camera.2.weight"):
                    v.add_(0.05)
            ge.load_state_dict(copy.deepcopy(state))  # two runs never share optimizer tensors
            gf.load_state_dict(copy.deepcopy(state))
        a, b = ge(x, views, step), gf(x, views, step)
        assert torch.equal(a.t, b.t)
        diffs.append(rel_diff(b.grad, a.grad))
        if ge.psi is not None:
            la, lb = ge.update(x, views, step), gf.update(x, views, step)
            assert abs(la["psi_loss"] - lb["psi_loss"]) <= 1e-4 * abs(la["psi_loss"]), (la, lb)
            assert la["psi_skipped"] == lb["psi_skipped"] == 0.0
            for (n, p), q in zip(ge.psi._lora.items(), gf.psi._lora.values()):
                assert rel_diff(q, p) < 1e-4, n  # AdamW's first steps: ~lr sign(g), robust
    print(method, "fast vs eager G, relative:", ", ".join(f"{d:.2g}" for d in diffs))
    assert max(diffs) < FP32_RTOL, diffs


def test_fast_path_calls_the_unet_fewer_times(tiny_repo, tmp_path):
    """VSD: one UNet call per guidance step (3B rows) instead of two; ESD one instead of two;
    DSD two instead of three (+ the trajectory's, cached per grid state)."""
    counts = {}
    for method in ("vsd", "esd", "dsd"):
        for fast in (False, True):
            tr = _trainer(tiny_repo, tmp_path, method, fast)
            calls = []
            hook = tr.c.backbone.unet.register_forward_hook(lambda m, i, o, calls=calls: calls.append(i[0].shape[0]))
            x = tr.c.representation.render(tr.c.cameras.sample(0, torch.Generator().manual_seed(0))).x.detach()
            for step in range(3):
                views = tr.c.cameras.sample(step, torch.Generator().manual_seed(step))
                calls.clear()
                tr.c.guidance(x, views, step)
            hook.remove()
            counts[method, fast] = list(calls)  # batch of each call at the last step
    # eager: psi's call, then the prior's CFG pair (Backbone.eps_pair_with_psi)
    assert counts["vsd", False] == [1, 2] and counts["vsd", True] == [3]
    assert counts["esd", False] == [2, 2] and counts["esd", True] == [4]
    # DSD: e_d, e_t, e_td (the scale_td = 1 call has no null row) -> e_d, [e_t | e_td]; before them
    # the trajectory's DDIM steps to grid states it had not reached yet (4 view prompts x CFG)
    eager_dsd, fast_dsd = counts["dsd", False], counts["dsd", True]
    assert eager_dsd[-3:] == [2, 2, 1] and fast_dsd[-2:] == [2, 3], counts
    assert eager_dsd[:-3] == fast_dsd[:-2], counts


def test_fast_trainer_on_nerf_matches_eager(tiny_repo, tmp_path):
    """Full trainer steps (render, encode, guidance, backward, psi update) on a NeRF with the
    chunked, checkpointed render: the fast path's losses follow the eager path's."""
    extra = ["representation=nerf", "camera.height=16", "camera.width=16", "representation.chunk_rays=100"]
    logs = {}
    for fast in (False, True):
        ex = [*extra, f"representation.checkpoint_chunks={str(fast).lower()}"]
        tr = _trainer(tiny_repo, tmp_path, "vsd", fast, ex)
        logs[fast] = [tr.train_step(s) for s in range(3)]
    for a, b in zip(logs[False], logs[True]):
        assert abs(a["loss"] - b["loss"]) <= 1e-4 * abs(a["loss"]), (a, b)
        assert abs(a["psi_loss"] - b["psi_loss"]) <= 1e-4 * abs(a["psi_loss"]), (a, b)


def test_bf16_fast_path_runs(tiny_repo, tmp_path):
    """bfloat16 everywhere fp16 is (UNet, VAE, text encoder); psi's weights stay float32."""
    tr = _trainer(tiny_repo, tmp_path, "vsd", True,
                  ["backbone.dtype=bfloat16", "representation=nerf", "camera.height=16", "camera.width=16"])
    bb = tr.c.backbone
    assert bb.unet.dtype == bb.vae.dtype == torch.bfloat16
    for step in range(2):
        logs = tr.train_step(step)
    assert all(torch.isfinite(torch.tensor(float(v))) for v in logs.values()), logs
    assert all(p.dtype == torch.float32 for p in tr.c.guidance.psi.trainable_parameters())


# --- psi's step without fp16 hazards ------------------------------------------------------------
@pytest.mark.parametrize("fast", [False, True])
def test_non_finite_psi_step_is_skipped(tiny_repo, fast):
    bb = make_backbone(tiny_repo, fast=fast)
    psi = _psi(bb, rank=2)
    x, views = _latents(bb), _views()
    emb = bb.embed("a lion").expand(2, -1, -1)
    with torch.no_grad():
        psi.camera[0].bias[0] = float("inf")  # an overflowed weight: every prediction is non-finite
    before = {n: p.detach().clone() for n, p in psi._lora.items()}
    logs = psi.fit_step(x, views, torch.Generator().manual_seed(0), emb)
    assert logs["psi_skipped"] == 1.0
    assert all(torch.equal(p, before[n]) for n, p in psi._lora.items())  # no NaN written by AdamW
    assert not psi.optimizer.state  # the step never ran


# --- graphs off the GPU -----------------------------------------------------------------------
def test_graph_cache_runs_eagerly_off_cuda(caplog):
    lin = torch.nn.Linear(3, 2)
    cache = GraphCache(enabled=True, name="test graphs")
    x = torch.randn(4, 3, requires_grad=True)
    with caplog.at_level(logging.INFO, logger="src.backbones.graphs"):
        with torch.no_grad():
            assert torch.equal(cache.forward("f", lin, (x,)), lin(x))
    assert "CUDA graphs need a GPU" in caplog.text and cache.off_reason
    y = cache.with_input_grad("g", lambda v: lin(v).tanh(), (x,))
    (gx,) = torch.autograd.grad(y.sum(), x)
    (ref,) = torch.autograd.grad(lin(x).tanh().sum(), x)
    assert torch.equal(gx, ref)
    loss = cache.train_step("s", lambda v: lin(v).pow(2).sum(), (x.detach(),), list(lin.parameters()))
    assert loss.shape == () and all(p.grad is not None for p in lin.parameters())
    assert cache.summary()["captured"] == [] and cache.replays == 0


def test_backbone_fast_config_is_checked(tiny_repo):
    from src.backbones.sd import StableDiffusion
    from src.checks import ConfigError

    base = {"path": str(tiny_repo), "dtype": "float16", "vae_mode": "mean"}
    StableDiffusion.validate_config({**base, "fast": True, "cuda_graphs": False}, "backbone")
    with pytest.raises(ConfigError, match="backbone.fast='yes' is invalid"):
        StableDiffusion.validate_config({**base, "fast": "yes"}, "backbone")
    StableDiffusion.validate_config({**base, "fast": True, "compile": "all"}, "backbone")
    with pytest.raises(ConfigError, match="backbone.compile='max' is invalid.*none, vae, unet, all"):
        StableDiffusion.validate_config({**base, "fast": True, "compile": "max"}, "backbone")
    with pytest.raises(ConfigError, match="backbone.compile='vae' needs backbone.fast=true"):
        StableDiffusion.validate_config({**base, "fast": False, "compile": "vae"}, "backbone")


def test_compile_applies_on_a_gpu_only(tiny_repo):
    """backbone.compile leaves the CPU path eager (the suite's reference) and is undone when the
    backbone leaves the GPU; the GPU side is tests/test_sd_cuda.py."""
    from src.backbones.sd import StableDiffusion

    with pytest.raises(ValueError, match="backbone.compile='all' needs backbone.fast=true"):
        StableDiffusion(path=str(tiny_repo), dtype="float32", embedding_cache=None, compile="all")
    bb = StableDiffusion(path=str(tiny_repo), dtype="float32", embedding_cache=None, fast=True, compile="all")
    bb.to("cpu")
    assert bb.unet._compiled_call_impl is None and bb.vae.encoder._compiled_call_impl is None
    bb._compile_on(torch.device("cuda"))  # what .cuda() calls once the weights are on the GPU
    assert bb.unet._compiled_call_impl is not None and bb.vae.encoder._compiled_call_impl is not None
    bb._compile_on(torch.device("cpu"))
    assert bb.unet._compiled_call_impl is None and bb.vae.encoder._compiled_call_impl is None


# --- the fast path's VAE (src/backbones/fast_vae.py) -------------------------------------------
@pytest.mark.parametrize("channels_last", [False, True])
def test_wide_group_norm_equals_torch_values_and_gradients(channels_last):
    from src.backbones.fast_vae import group_norm

    g = torch.Generator().manual_seed(0)
    x = (torch.randn(2, 12, 5, 7, generator=g, dtype=torch.float64) * 3 + 1)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    w, b = (torch.randn(12, generator=g, dtype=torch.float64) for _ in range(2))
    ins = [t.clone().requires_grad_(True) for t in (x, w, b)]
    refs = [t.clone().requires_grad_(True) for t in (x, w, b)]
    y = group_norm(ins[0], 4, ins[1], ins[2], 1e-6)
    ref = torch.nn.functional.group_norm(refs[0], 4, refs[1], refs[2], 1e-6)
    up = torch.randn(ref.shape, generator=g, dtype=torch.float64)
    (y * up).sum().backward()
    (ref * up).sum().backward()
    assert y.dtype == x.dtype
    assert y.is_contiguous(memory_format=torch.channels_last) == channels_last
    assert rel_diff(y, ref) < 1e-6
    for a, r in zip(ins, refs):
        assert rel_diff(a.grad, r.grad) < 1e-5
    # half precision: float32 statistics, as the native kernel keeps them
    xh = x.to(torch.bfloat16)
    yh = group_norm(xh, 4, w.to(torch.bfloat16), b.to(torch.bfloat16), 1e-6)
    assert yh.dtype == torch.bfloat16 and rel_diff(yh, ref) < 1e-2


def test_fast_vae_encode_equals_eager_with_its_backward(tiny_repo):
    """fast=true swaps the VAE's attention processor and GroupNorms (and memory format): the
    latents and d(latents)/d(render) are the eager path's to float32 round-off."""
    from diffusers.models.attention_processor import AttnProcessor

    from src.backbones.fast_vae import WideGroupNorm

    eager, fast = make_backbone(tiny_repo), make_backbone(tiny_repo, fast=True, cuda_graphs=False)
    norms = [m for m in fast.vae.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert norms and all(type(m) is WideGroupNorm for m in norms)
    assert all(isinstance(p, AttnProcessor) for p in fast.vae.attn_processors.values())
    assert not any(p.requires_grad for p in fast.vae.parameters())
    rgb0 = torch.rand(2, 24, 24, 3, generator=torch.Generator().manual_seed(1))
    w = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    out = {}
    for name, bb in (("eager", eager), ("fast", fast)):
        rgb = rgb0.clone().requires_grad_(True)
        z = bb.encode(rgb)
        (grad,) = torch.autograd.grad((w * z).sum(), rgb)
        out[name] = z.detach(), grad
    assert rel_diff(out["fast"][0], out["eager"][0]) < 1e-5
    assert rel_diff(out["fast"][1], out["eager"][1]) < 1e-5


# --- the graph plumbing, with a CPU double of a CUDA graph -----------------------------------
def _flat(out) -> list:
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _flat(o)]
    return [out]


class _ReplayByRerun:
    """Test double of a captured CUDA graph: a replay re-runs the captured body and writes its
    results into the tensors the capture returned, in place, as a real replay rewrites its
    static outputs. It reads the static inputs and the current parameters, as a graph does."""

    def __init__(self, body, out, corrupt: bool = False):
        self.body, self.out, self.corrupt = body, out, corrupt
        self.grad_mode = torch.is_grad_enabled()  # a graph holds what was captured, in any mode

    def replay(self):
        with torch.set_grad_enabled(self.grad_mode):
            new = self.body()
        with torch.no_grad():
            for a, b in zip(_flat(self.out), _flat(new)):
                if a is not None:
                    a.copy_(b + 1.0 if self.corrupt else b)


class CPUGraphCache(GraphCache):
    """GraphCache whose 'graphs' are _ReplayByRerun: every code path but the CUDA calls."""

    corrupt = False

    def _usable(self, inputs):
        return self.enabled

    def _warm(self, body):
        body()

    def _record(self, body):
        out = body()
        return _ReplayByRerun(body, out, self.corrupt), out


def test_graph_plumbing_forward_input_grad_and_train_step():
    torch.manual_seed(0)
    lin = torch.nn.Linear(3, 2)
    cache = CPUGraphCache(name="cpu double")
    f = lambda x, k: (lin(x) * k[:, None]).tanh()  # noqa: E731  (k: an integer input)
    for seed in range(2):  # a second call with other values replays the same graph
        x = torch.randn(4, 3, generator=torch.Generator().manual_seed(seed))
        k = torch.tensor([1, 2, 3, 4])
        with torch.no_grad():
            assert torch.equal(cache.forward("f", f, (x, k)), f(x, k))
        xg = x.clone().requires_grad_(True)
        y = cache.with_input_grad("g", f, (xg, k))
        w = torch.randn(4, 2)
        (gx,) = torch.autograd.grad((w * y).sum(), xg)
        xr = x.clone().requires_grad_(True)
        (ref,) = torch.autograd.grad((w * f(xr, k)).sum(), xr)
        torch.testing.assert_close(gx, ref, rtol=0, atol=0)
        loss = cache.train_step("s", lambda v: lin(v).pow(2).sum(), (x,), list(lin.parameters()))
        grads = [p.grad.clone() for p in lin.parameters()]
        for p in lin.parameters():
            p.grad = None
        lin(x).pow(2).sum().backward()
        assert all(torch.equal(a, p.grad) for a, p in zip(grads, lin.parameters()))
        assert float(loss) == float(lin(x).pow(2).sum().detach())
        with torch.no_grad():  # an in-place optimizer step between calls
            for p in lin.parameters():
                p.sub_(0.1 * p.grad)
    assert len(cache.captured) == 3 and cache.replays == 6 and not cache.failures
    assert max(cache.verified.values()) == 0.0
    # a backward after a second forward replay of the same graph would read overwritten activations
    xg = torch.randn(4, 3, requires_grad=True)
    y1 = cache.with_input_grad("g", f, (xg, k))
    cache.with_input_grad("g", f, (xg, k))
    with pytest.raises(RuntimeError, match="overwritten"):
        y1.sum().backward()


def test_graph_that_disagrees_with_eager_is_dropped(caplog):
    cache = CPUGraphCache(name="cpu double")
    cache.corrupt = True  # every replay is off by one: verification must catch it
    x = torch.randn(3)
    with caplog.at_level(logging.WARNING, logger="src.backbones.graphs"):
        out = cache.forward("f", torch.sin, (x,))
    assert torch.equal(out, torch.sin(x)) and cache.replays == 0
    assert "replay differs from the eager call" in next(iter(cache.failures.values()))
    assert "running it eagerly" in caplog.text
    assert torch.equal(cache.forward("f", torch.sin, (x,)), torch.sin(x))  # stays eager, no retry
    assert cache.captured == []


@pytest.mark.parametrize("method", ["vsd", "sim", "dsd"])
def test_fast_trainer_through_the_graph_plumbing_matches_eager(method, tiny_repo, tmp_path):
    """The fast path's code through GraphCache (VAE encode forward + backward, the fused call,
    psi's DSM step) with the CPU double standing in for CUDA graphs: the same training run."""
    extra = ["representation=nerf", "camera.height=16", "camera.width=16"]
    logs = {}
    for fast in (False, True):
        tr = _trainer(tiny_repo, tmp_path, method, fast, extra)
        if fast:
            tr.c.backbone.graphs = CPUGraphCache(name="cpu double")
        logs[fast] = [tr.train_step(s) for s in range(3)]
    for a, b in zip(logs[False], logs[True]):
        for k in ("loss", "grad_norm", "psi_loss"):
            if k in a:
                assert abs(a[k] - b[k]) <= 1e-4 * abs(a[k]), (k, a, b)
    graphs = tr.c.backbone.graphs
    names = {c.split("[")[0] for c in graphs.captured}
    want = {"vae_encode", "psi_dsm", "joint"} if method == "vsd" else \
        {"vae_encode", "psi_dsm", "joint_grad"} if method == "sim" else {"vae_encode", "prior"}
    assert names == want and not graphs.failures, graphs.summary()
    assert graphs.replays >= 3 * len(want)
