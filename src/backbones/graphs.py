"""CUDA graphs of static-shape calls: the fast path's one tool (docs/stable_diffusion.md "Fast path").

At batch 1-4 the SD 2.1 UNet is launch-bound: replayed as a CUDA graph its CFG forward takes a
fraction of its eager time (benchmarks/sd_gpu.json, primitives ``unet_cfg_b2_*``). ``GraphCache`` follows PyTorch's recipe
(torch.cuda graph semantics, "whole network capture"): warm up on a side stream, capture once
into a ``torch.cuda.CUDAGraph`` reading static input tensors, then per call copy the inputs into
them and replay. Three kinds of call:

- ``forward(name, fn, inputs)``: no autograd (the prior's CFG call, psi's forward, the fused
  prior + psi call of VSD / ESD).
- ``with_input_grad(name, fn, inputs)``: forward and backward captured as two graphs behind one
  ``autograd.Function``, differentiable in the inputs that require grad (the VAE encode of a
  render; SIM's fused call, which back-propagates into both networks' input x_t).
- ``train_step(name, fn, inputs, params)``: forward + backward of a scalar loss writing into the
  parameters' ``.grad`` (psi's DSM step); the optimizer step stays eager, outside the graph.

What a replay can and cannot see (the contract every caller keeps):

- kernel arguments are baked in: parameters must keep their storage. In-place updates (AdamW,
  ``load_state_dict``'s ``copy_``, LoRA's ``set_extra_state``) are seen by every replay;
  anything that re-allocates them (``.to(device)``) must call ``clear()``;
- shape, dtype, device and requires_grad of every input are part of the key: a new shape
  captures a new graph (each costs ``WARMUP`` eager calls and one capture, once);
- Python-level branches are frozen at capture (e.g. peft adapters on/off): each key stands for
  one fixed computation;
- nothing inside may synchronize with the host (``.item()``, CPU tensors).

Every failure degrades to the eager call with a logged reason, recorded in ``failures``; on
the CPU the cache is off and every call is the eager one. After each capture one replay is
checked against an eager run of the same inputs (``verify``): a graph that disagrees by more
than ``VERIFY_RTOL`` is dropped and the key runs eagerly from then on.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from src import rng

log = logging.getLogger(__name__)

# PyTorch's docs warm up 3 iterations (cuBLAS / cuDNN handles, autotuning, lazy init) before
# capture; 2 suffice for a fixed-shape forward and keep the capture of a 866 M UNet cheap.
WARMUP = 2
# Replay vs eager on the same inputs: the same kernels, so they agree to round-off unless a
# buffer is stale or aliased (then they differ by O(1)). Relative to the eager norm.
VERIFY_RTOL = 1e-2


def _as_tuple(out) -> tuple[Tensor, ...]:
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def _unwrap(outs: tuple[Tensor, ...], like):
    return outs if isinstance(like, (tuple, list)) else outs[0]


_NEW = object()  # a key not captured yet (None: a key that failed and runs eagerly)


def _key(name: str, inputs: Sequence[Tensor]) -> tuple:
    return (name, *((tuple(x.shape), x.dtype, x.device, x.requires_grad) for x in inputs))


def _label(key: tuple) -> str:
    """'name[shape, shape, ...]' of a key, for logs and the benchmark's record."""
    return f"{key[0]}{[list(k[0]) for k in key[1:]]}"


def rel_diff(a: Tensor | None, b: Tensor | None) -> float:
    """||a - b|| / ||b|| in float64 (nan if either is missing or not finite)."""
    if a is None or b is None:
        return 0.0 if a is None and b is None else float("nan")
    a, b = a.detach().double(), b.detach().double()
    den = float(b.norm())
    num = float((a - b).norm())
    return num / den if den > 0 else num


@dataclass
class _Entry:
    """One captured call: static inputs, the graph(s), static outputs."""

    static: list[Tensor]
    graph: torch.cuda.CUDAGraph
    outputs: tuple[Tensor, ...]
    like: object = None  # fn's return (tensor or tuple), for unwrapping
    backward: torch.cuda.CUDAGraph | None = None  # with_input_grad
    grad_outputs: list[Tensor] = field(default_factory=list)  # static dL/d(outputs requiring grad)
    grad_inputs: tuple = ()  # static dL/d(inputs requiring grad), None where unused
    grads: list[Tensor | None] = field(default_factory=list)  # train_step: the parameters' .grad
    generation: int = 0  # forward replays so far (a backward must follow its own forward)

    def load(self, inputs: Sequence[Tensor]) -> None:
        with torch.no_grad():
            for s, x in zip(self.static, inputs):
                if s is not x:
                    s.copy_(x)


class _GraphedCall(torch.autograd.Function):
    """A captured forward / backward pair as one differentiable call."""

    @staticmethod
    def forward(ctx, entry: _Entry, *inputs):
        entry.load(inputs)
        entry.graph.replay()
        entry.generation += 1
        ctx.entry, ctx.generation = entry, entry.generation
        ctx.needs = [x.requires_grad for x in entry.static]
        outs = tuple(o.detach().clone() for o in entry.outputs)
        ctx.mark_non_differentiable(*(o for o, s in zip(outs, entry.outputs) if not s.requires_grad))
        return outs

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, *grads):
        entry = ctx.entry
        if ctx.generation != entry.generation:
            raise RuntimeError("a graphed call's saved activations were overwritten by a later replay of "
                               "the same graph before its backward ran")
        diff = [g for g, s in zip(grads, entry.outputs) if s.requires_grad]
        with torch.no_grad():
            for static, g in zip(entry.grad_outputs, diff):
                if g is None:
                    static.zero_()
                else:
                    static.copy_(g)
        entry.backward.replay()
        it = iter(entry.grad_inputs)
        result = [None]  # the entry argument
        for need in ctx.needs:
            g = next(it) if need else None
            result.append(None if g is None else g.clone())
        return tuple(result)


class GraphCache:
    """Captured graphs of one model, keyed by call name and input signature (module docstring).

    enabled=False (or inputs not on CUDA) makes every method run ``fn`` eagerly.
    """

    def __init__(self, enabled: bool = True, name: str = "graphs", verify: bool = True, warmup: int = WARMUP):
        self.enabled, self.name, self.verify, self.warmup = bool(enabled), name, verify, int(warmup)
        self._entries: dict[tuple, _Entry | None] = {}
        self.failures: dict[str, str] = {}  # key -> why it runs eagerly
        self.captured: list[str] = []
        self.replays = 0
        self.verified: dict[str, float] = {}  # key -> replay vs eager relative difference
        self.off_reason: str | None = None  # why graphs are off altogether (logged once)
        self._pool = None
        self._side: torch.cuda.Stream | None = None

    # --- bookkeeping ------------------------------------------------------------------
    def clear(self) -> None:
        """Forget every graph (parameters were re-allocated, e.g. by ``.to(device)``)."""
        self._entries.clear()
        self._pool = None

    def summary(self) -> dict:
        return {"enabled": self.enabled, "captured": list(self.captured), "replays": self.replays,
                "failures": dict(self.failures), "verified_rel_diff": dict(self.verified),
                "off_reason": self.off_reason}

    def _usable(self, inputs: Sequence[Tensor]) -> bool:
        if not self.enabled:
            return False
        if not all(isinstance(x, Tensor) for x in inputs):
            raise TypeError("GraphCache inputs must be tensors")
        if not all(x.is_cuda for x in inputs):
            if self.off_reason is None:
                self.off_reason = "inputs not on CUDA: CUDA graphs need a GPU, running eagerly"
                log.info("%s: %s", self.name, self.off_reason)
            return False
        if torch.cuda.is_current_stream_capturing():
            return False  # inside someone else's capture: just run the code
        return True

    def _fail(self, key: tuple, err: BaseException) -> None:
        reason = f"{type(err).__name__}: {err}"[:400]
        self.failures[_label(key)] = reason
        self._entries[key] = None  # a failed key stays eager
        # a capture that failed in capture_end leaves its memory pool marked as recording
        # ("beginAllocateToPool: already recording"): later captures take a fresh pool
        self._pool = None
        log.warning("%s: CUDA graph of %r could not be used (%s); running it eagerly", self.name, key[0], reason)
        try:
            torch.cuda.synchronize()
        except Exception:  # pragma: no cover - a sticky CUDA error: nothing left to save
            pass

    def _pool_handle(self):
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        return self._pool

    def _warm(self, body: Callable[[], None]) -> None:
        """Run ``body`` ``warmup`` times on a side stream (PyTorch's pre-capture recipe)."""
        if self._side is None:
            self._side = torch.cuda.Stream()
        self._side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self._side):
            for _ in range(self.warmup):
                body()
        torch.cuda.current_stream().wait_stream(self._side)

    @staticmethod
    def _static(inputs: Sequence[Tensor]) -> list[Tensor]:
        return [x.detach().clone().requires_grad_(x.requires_grad) for x in inputs]

    def _check(self, key: tuple, graphed: Sequence[Tensor | None], eager: Sequence[Tensor | None]) -> None:
        worst = 0.0
        for g, e in zip(graphed, eager):
            d = rel_diff(g, e)
            worst = max(worst, d) if math.isfinite(d) else float("inf")
        self.verified[_label(key)] = worst
        if not worst <= VERIFY_RTOL:
            raise RuntimeError(f"replay differs from the eager call by {worst:.3g} (relative) > {VERIFY_RTOL}")

    def _record(self, body: Callable[[], object]):
        """Capture ``body()`` into a CUDA graph: (graph, body's return, whose tensors the graph's
        replays rewrite in place). The one place that captures (a test double replaces it)."""
        graph = torch.cuda.CUDAGraph()
        stream = torch.cuda.current_stream()
        try:
            with torch.cuda.graph(graph, pool=self._pool_handle()):
                out = body()
        finally:
            # a capture that fails in capture_end leaves torch.cuda.graph's side stream current
            torch.cuda.set_stream(stream)
        return graph, out

    def _done(self, key: tuple, entry: _Entry) -> _Entry:
        self._entries[key] = entry
        self.captured.append(_label(key))
        return entry

    def _entry(self, key: tuple, inputs: Sequence[Tensor], capture: Callable[[], _Entry]) -> _Entry | None:
        """The graph of ``key``, captured by ``capture()`` on first use; None: run eagerly (graphs
        off, inputs not on CUDA, or this key's capture failed, which is recorded once)."""
        entry = self._entries.get(key, _NEW) if self._usable(inputs) else None
        if entry is _NEW:
            try:
                entry = capture()
            except Exception as err:
                self._fail(key, err)
                entry = None
        return entry

    # --- forward only -------------------------------------------------------------------
    def forward(self, name: str, fn: Callable, inputs: Sequence[Tensor]):
        """fn(*inputs) without autograd, replayed from a graph where possible."""
        inputs = tuple(inputs)
        key = _key(name, inputs)
        entry = self._entry(key, inputs, lambda: self._capture_forward(key, fn, inputs))
        if entry is None:
            with torch.no_grad():
                return fn(*inputs)
        entry.load(inputs)
        entry.graph.replay()
        self.replays += 1
        return _unwrap(tuple(o.clone() for o in entry.outputs), entry.like)

    def _capture_forward(self, key, fn, inputs) -> _Entry:
        static = [x.detach().clone() for x in inputs]
        with torch.no_grad():
            self._warm(lambda: fn(*static))
            graph, like = self._record(lambda: fn(*static))
        entry = _Entry(static=static, graph=graph, outputs=_as_tuple(like), like=like)
        if self.verify:
            entry.graph.replay()
            got = [o.clone() for o in entry.outputs]
            with torch.no_grad():
                self._check(key, got, _as_tuple(fn(*static)))
        return self._done(key, entry)

    # --- forward + backward into the inputs -------------------------------------------------
    def with_input_grad(self, name: str, fn: Callable, inputs: Sequence[Tensor]):
        """fn(*inputs), differentiable in the inputs that require grad (module docstring)."""
        inputs = tuple(inputs)
        if not (torch.is_grad_enabled() and any(x.requires_grad for x in inputs)):
            return self.forward(name, fn, inputs)
        key = _key(name, inputs)
        entry = self._entry(key, inputs, lambda: self._capture_with_grad(key, fn, inputs))
        if entry is None:
            return fn(*inputs)
        self.replays += 1
        return _unwrap(_GraphedCall.apply(entry, *inputs), entry.like)

    def _capture_with_grad(self, key, fn, inputs) -> _Entry:
        static = self._static(inputs)
        need = [s for s in static if s.requires_grad]
        held: dict[str, tuple] = {}  # the forward's outputs, which the backward graph differentiates

        def fwd():
            held["outs"] = _as_tuple(fn(*static))
            return held["outs"]

        def diff() -> list[Tensor]:
            return [o for o in held["outs"] if o.requires_grad]

        def warm():
            fwd()
            torch.autograd.grad(diff(), need, grad_outputs=[torch.ones_like(o) for o in diff()], allow_unused=True)

        with torch.enable_grad():
            self._warm(warm)
            graph, outputs = self._record(fwd)
            if not diff():
                raise RuntimeError("no output requires grad")
            grad_outputs = [torch.zeros_like(o) for o in diff()]
            backward, grad_inputs = self._record(lambda: torch.autograd.grad(
                diff(), need, grad_outputs=grad_outputs, retain_graph=True, allow_unused=True))
        like = outputs if isinstance(outputs, tuple) and len(outputs) > 1 else outputs[0]
        entry = _Entry(static=static, graph=graph, outputs=outputs, like=like, backward=backward,
                       grad_outputs=grad_outputs, grad_inputs=tuple(grad_inputs))
        if self.verify:
            # a generic cotangent (not all-ones), from a local generator: the run's streams untouched
            gen = rng.generator(0, rng.Stream.EVAL)
            probe = [torch.randn(o.shape, generator=gen, dtype=o.dtype).to(o.device) for o in grad_outputs]
            with torch.no_grad():
                for s, p in zip(grad_outputs, probe):
                    s.copy_(p)
            graph.replay()
            backward.replay()
            got = [o.clone() for o in outputs] + [None if g is None else g.clone() for g in grad_inputs]
            with torch.enable_grad():
                eager_out = _as_tuple(fn(*static))
                eager_gin = torch.autograd.grad([o for o in eager_out if o.requires_grad], need,
                                                grad_outputs=probe, allow_unused=True)
            self._check(key, got, list(eager_out) + list(eager_gin))
        return self._done(key, entry)

    # --- a training step's forward + backward into parameters' .grad -------------------------
    def train_step(self, name: str, fn: Callable, inputs: Sequence[Tensor], params: Sequence[Tensor]) -> Tensor:
        """loss = fn(*inputs); loss.backward() into ``params``' ``.grad`` (overwritten, not
        accumulated); returns the detached loss. The optimizer step is the caller's."""
        inputs, params = tuple(inputs), list(params)
        key = _key(name, inputs)
        entry = self._entry(key, inputs, lambda: self._capture_train(key, fn, inputs, params))
        if entry is None:
            return _loss_and_grads(fn, inputs, params)[0]
        entry.load(inputs)
        entry.graph.replay()
        self.replays += 1
        for p, g in zip(params, entry.grads):
            p.grad = g  # the graph's own buffers, whatever the optimizer did to .grad meanwhile
        return entry.outputs[0].detach().clone()

    def _capture_train(self, key, fn, inputs, params) -> _Entry:
        static = [x.detach().clone() for x in inputs]
        self._warm(lambda: _loss_and_grads(fn, static, params))
        # grads set to None first, so that backward allocates them inside the graph's pool
        graph, (loss, grads) = self._record(lambda: _loss_and_grads(fn, static, params))
        entry = _Entry(static=static, graph=graph, outputs=(loss,), like=loss, grads=list(grads))
        if self.verify:
            graph.replay()
            got = [loss.clone()] + [None if g is None else g.clone() for g in grads]
            want = _loss_and_grads(fn, static, params)
            self._check(key, got, [want[0], *want[1]])
        for p, g in zip(params, grads):
            p.grad = g
        return self._done(key, entry)


def _loss_and_grads(fn: Callable, inputs: Sequence[Tensor], params: list[Tensor]) -> tuple[Tensor, list]:
    """loss = fn(*inputs) and its backward into params' fresh ``.grad`` -> (loss detached, grads)."""
    for p in params:
        p.grad = None
    with torch.enable_grad():
        loss = fn(*inputs)
        loss.backward()
    return loss.detach(), [p.grad for p in params]
