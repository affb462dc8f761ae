"""Batch normalization as a PyTorch module, written from scratch.

:class:`BatchNorm` is a drop-in for ``torch.nn.BatchNorm1d``, ``BatchNorm2d`` and
``BatchNorm3d``: the same constructor (``bias=False`` included), parameter and buffer names,
state_dict (old checkpoints without ``num_batches_tracked`` included), outputs, gradients of
every order, running buffers and dtypes. It calls none of torch's batch-norm functions; the
training-mode forward is :class:`BatchNormFunction`, a custom autograd Function whose
backward is the compact closed form of :func:`bncourse.functional.batch_norm_backward`.
In eager mode it saves one activation-sized tensor, its input ``x`` (as torch's layer does),
and three per-channel vectors (``mean``, ``inv_std`` and ``weight``) for the backward pass.

How the contract of torch's layer is kept, and why:

* **Derivatives of every order.** The layer picks one of three Functions per call, all
  computing the same. Plain eager calls (what training runs) use a form with ``ctx`` in
  ``forward``, which ``Function.apply`` calls without binding the signature each time (tens
  of microseconds a step). Its forward computes ``y = x * scale + shift`` with per-channel
  ``scale`` and ``shift`` and saves ``x``, ``mean`` and ``inv_std``; its backward asks
  ``torch.is_grad_enabled()``, which is True in a backward exactly under
  ``create_graph=True``. If not, it takes a first-order path in the fewest passes over
  memory: the per-channel sums of ``dy`` and ``dy * x``, then ``dx = a * x + b + scale * dy``
  (with ``|mean| >> std`` it centres ``x`` before the product, see
  :data:`EAGER_CANCELLATION_LIMIT`). If so, it recomputes ``x_hat`` and ``inv_std`` from the
  saved ``x`` with differentiable ops and runs :func:`compact_backward` on them, so autograd
  records a graph back to ``x``, ``weight`` and ``dy``: double backward, Hessians and
  gradient penalties are exact. Forward-mode AD has its own ``jvp``. Under ``torch.func``
  (``vmap`` over ensembles, ``jacrev``, ``jvp``, ``hessian``) the layer uses the
  ``setup_context`` form with ``generate_vmap_rule`` and ``jvp``, which returns ``x_hat``
  and ``inv_std`` as two extra differentiable outputs and saves them *as outputs*: a second
  backward reaches ``x`` through them, with gradients for ``x_hat`` and ``inv_std`` (its
  backward accepts those too). Under ``torch.compile`` it uses the same without ``jvp``
  (Dynamo refuses a Function with a custom ``jvp``: it would break the graph at every
  layer, and ``fullgraph=True`` would fail), so a compiled model is one graph in training
  and in eval.
* **Layout.** The output and the input gradient have the memory format torch's kernels give
  them: channels_last (or channels_last_3d) for an input strided like it, contiguous for
  every other layout (a permutation of the axes, a slice, an expanded tensor).
* **Meta device.** ``BatchNorm(..., device="meta")``, then ``to_empty(device=...)`` and
  ``reset_parameters()``, builds the layer without allocating, as torch's does (FSDP
  builds large models this way); a forward on the meta device gives a meta output.
* **Reduced precision.** float16/bfloat16 inputs are normalized with statistics accumulated
  in float32 (``mean``, ``var``, ``inv_std`` are float32); ``y``, ``x_hat`` and the input
  gradient are in the input's dtype. Parameters and buffers must have the input's dtype,
  or be float32 under a float16/bfloat16 input (mixed precision), exactly torch's rule;
  anything else (a float64 input into a float32 layer) raises :class:`DtypeMismatchError`,
  which is both a ``TypeError`` and the ``RuntimeError`` torch raises. Under
  ``torch.autocast`` the layer computes in its input's dtype, as torch's does.
* **Running statistics** are updated inside the Function's forward, before anything is saved
  for backward, as torch's kernel does: non-reentrant activation checkpointing, which stops
  recomputing once the saved tensors are back, then updates them a second time as it does
  for torch's layer.
* **Zero-size batches** give an empty output, zero parameter gradients and unchanged running
  statistics (the counter still advances), like torch. Buffers set to ``None`` by hand,
  ``momentum=None`` and the ``num_batches_tracked`` logic follow ``_BatchNorm.forward`` line
  for line.
* **Torch's tools.** :class:`BatchNorm` subclasses ``torch.nn.modules.batchnorm._BatchNorm``,
  because the tools that treat BN layers specially find them with ``isinstance`` and a
  layer they do not recognize is silently skipped (``swa_utils.update_bn`` would leave stale
  statistics, FSDP's mixed precision would cast it to low precision). The subclass inherits
  torch's constructor (parameter and buffer registration), ``reset_*``, ``extra_repr`` and
  ``_load_from_state_dict``; ``forward`` and everything it computes are defined here and
  never call ``F.batch_norm``. Consequences: ``torch.optim.swa_utils.update_bn`` and
  ``torch.func.replace_all_batch_norm_modules_`` work on it;
  ``torch.nn.SyncBatchNorm.convert_sync_batchnorm`` replaces it with torch's SyncBatchNorm
  (sharing its parameters and buffers; from then on torch computes; the course's own
  synchronized layer is ``bncourse.distributed.convert_sync_batchnorm``);
  ``torch.ao.quantization.fuse_modules`` (and ``fuse_modules_qat``) work on
  (Conv/ConvTranspose/Linear, BatchNorm[, ReLU]) because importing this module registers
  those patterns, each fused through torch's own fuser applied to :func:`to_torch` of the
  layer (fusing folds BN into the convolution, or hands it to torch's quantization-aware
  modules, so nothing of this layer is left to run); (BatchNorm, ReLU), where nothing fixes
  the number of spatial dimensions, raises a ``TypeError`` that points to :func:`to_torch`.
* **TorchScript is not supported**: the training-mode forward is a custom autograd Function
  written in Python, which ``torch.jit.script`` cannot compile and a saved
  ``torch.jit.trace`` cannot hold. ``torch.jit.script`` (of the layer or of a model holding
  it) raises a ``TypeError`` that says so and points to :func:`to_torch` (torch's layer,
  same state) or ``torch.compile``; so does ``torch.jit.trace`` of a forward that uses batch
  statistics. Tracing an eval-mode layer with running statistics works (plain tensor ops),
  and the trace can be saved and loaded.
* **The compiled path** (:func:`compiled_batch_norm`, for the benchmark) compiles for any
  number of shapes: the first :data:`COMPILE_STATIC_SHAPES` get kernels with their sizes
  fixed, later ones share dynamic-shape graphs (one per number of dimensions and dtype), and
  Dynamo's recompile limit is raised to :data:`COMPILE_RECOMPILE_LIMIT`, past which it
  raises instead of silently falling back to eager.

Deliberate differences from torch's layer, each with the behaviour of torch's it replaces:

* one class for 2D to 5D inputs (torch checks the dimension per class; ours accepts any
  input with at least 2 dimensions);
* the constructor validates: ``num_features`` must be a positive integer of any integer
  type (torch also takes 0); ``momentum`` in [0, 1] or ``None`` (torch takes any number,
  so a percentage such as 10 or a negative value silently makes the running statistics
  diverge); ``eps`` >= 0 (torch takes a negative ``eps`` and raises only when a
  training-mode forward meets it, and in eval mode normalizes with ``running_var + eps``
  whatever its sign). ``eps = 0`` is accepted, and a forward that uses batch statistics
  refuses it with a ``ValueError``, as torch's does;
* bad input raises an exception with a message that says what to do, of a class that is
  also torch's: a channel or per-channel length mismatch :class:`ShapeMismatchError`
  (``ValueError`` and torch's ``RuntimeError``), a non-floating input
  :class:`InputDtypeError` (``ValueError`` and torch's ``NotImplementedError``), a dtype
  mismatch :class:`DtypeMismatchError` (``TypeError`` and torch's ``RuntimeError``), eval
  mode without running statistics :class:`RunningStatsError` (``ValueError`` and torch's
  ``RuntimeError``); where torch raises ``ValueError`` (too few dimensions, one value per
  channel in training) ours does too;
* under ``torch.func`` and ``torch.compile``, for float16/bfloat16 inputs ``x_hat`` is saved
  in the input's dtype (torch saves the input, as the eager layer does), so there their
  gradients differ from torch's by a few roundings of that dtype;
* float16/bfloat16 layers (parameters in the low dtype too) normalize in float32 throughout;
  torch's CPU kernel folds ``gamma/sigma`` and ``beta - mean*gamma/sigma`` in the low dtype,
  which loses every digit when ``|mean| >> sigma`` (errors of order 1 for inputs of mean
  1000 and spread 400), so there the two differ by more than a rounding and ours is the one
  near the float64 result;
* TorchScript is not supported (above; it replaces ``torch.jit.script`` and the saving of
  a training-mode ``torch.jit.trace``, for which :func:`to_torch` gives torch's layer with
  the same state, and ``torch.compile`` compiles this one), and ``convert_sync_batchnorm``
  hands the layer's state to torch's SyncBatchNorm rather than keeping this layer.

The formulas also exist here as plain tensor functions: :func:`compact_forward` and
:func:`compact_backward` (what the Function runs, and what the compiled path compiles),
and :func:`staged_batch_norm` (the formula as separate tensor ops, differentiated by
autograd, for comparison).
"""

from __future__ import annotations

import contextlib
import operator

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = [
    "BatchNorm",
    "BatchNormFunction",
    "DtypeMismatchError",
    "ShapeMismatchError",
    "InputDtypeError",
    "RunningStatsError",
    "batch_norm",
    "compact_forward",
    "compact_backward",
    "staged_batch_norm",
    "compiled_batch_norm",
    "to_torch",
    "COMPILE_STATIC_SHAPES",
    "COMPILE_RECOMPILE_LIMIT",
]

_REDUCED = (torch.float16, torch.bfloat16)


class DtypeMismatchError(TypeError, RuntimeError):
    """Parameters or buffers whose dtype does not fit the input's (torch raises RuntimeError)."""


class ShapeMismatchError(ValueError, RuntimeError):
    """An input whose channels, or a per-channel tensor whose length, does not fit the others.

    Torch raises ``RuntimeError`` here; this is both, so code written for torch's layer
    (``except RuntimeError``) and code written for this one (``except ValueError``) catch it.
    """


class RunningStatsError(ValueError, RuntimeError):
    """Eval-mode normalization without both running statistics (torch: ``RuntimeError``)."""


class InputDtypeError(ValueError, NotImplementedError):
    """An input of a non-floating dtype (torch raises ``NotImplementedError``, a RuntimeError)."""


# The reduced axes and the per-channel view shape of each rank, built once: the layer asks
# for them several times a step, and a cached tuple is cheaper than a new list each time.
_REDUCED_AXES = {d: (0, *range(2, d)) for d in range(2, 9)}
_PER_CHANNEL_SHAPES = {d: (1, -1) + (1,) * (d - 2) for d in range(3, 9)}


def _dims(x: Tensor) -> tuple[int, ...]:
    """The axes a per-channel statistic reduces: every axis but the channels' (axis 1)."""
    d = x.dim()
    return _REDUCED_AXES[d] if d in _REDUCED_AXES else (0, *range(2, d))


def _per_channel(v: Tensor, x: Tensor) -> Tensor:
    """The per-channel vector ``v`` (shape ``(C,)``), shaped to broadcast against ``x``."""
    d = x.dim()
    if d == 2:
        return v  # (C,) broadcasts along the last axis of (N, C) as it is: no view to make
    shape = _PER_CHANNEL_SHAPES[d] if d in _PER_CHANNEL_SHAPES else (1, -1) + (1,) * (d - 2)
    return v.view(shape)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for float16/bfloat16 (statistics accumulate in float32), else the dtype itself."""
    return torch.float32 if dtype in _REDUCED else dtype


def _check_input(x: Tensor) -> None:
    if not isinstance(x, Tensor):
        raise ValueError(f"input must be a torch.Tensor; got {type(x).__name__}")
    if x.dim() < 2:
        raise ValueError(
            f"input must have at least 2 dimensions (N, C) or (N, C, *spatial); "
            f"got shape {tuple(x.shape)}"
        )
    if not x.is_floating_point():
        raise InputDtypeError(
            f"input must have a floating dtype; got {x.dtype}. Convert it first, e.g. x.float()"
        )


def _check_dtypes(x: Tensor, **tensors: Tensor | None) -> None:
    """torch's rule: the input's dtype, or float32 under a float16/bfloat16 input."""
    for name, v in tensors.items():
        if v is None or v.dtype == x.dtype:
            continue
        if x.dtype in _REDUCED and v.dtype == torch.float32:
            continue
        raise DtypeMismatchError(
            f"{name} is {v.dtype} but the input is {x.dtype}: parameters and buffers must "
            f"have the input's dtype, or be float32 under a float16/bfloat16 input (as in "
            f"torch, which raises RuntimeError here). Convert one side, e.g. "
            f"layer.to({x.dtype}) or x.to({v.dtype})"
        )


def _values_per_channel(x: Tensor) -> int:
    return x.numel() // x.shape[1] if x.shape[1] else 0


def _check_training_batch(x: Tensor) -> int:
    m = _values_per_channel(x)
    if m == 1:
        raise ValueError(
            f"Expected more than 1 value per channel when training, got input size "
            f"{tuple(x.shape)}: batch normalization in training mode needs m >= 2 values per "
            f"channel (the variance of one value is 0). Use a larger batch or eval()"
        )
    return m


def _check_channels(x: Tensor, num_features: int) -> None:
    if x.shape[1] != num_features:
        raise ShapeMismatchError(
            f"input has {x.shape[1]} channels on axis 1 but the layer was built for "
            f"num_features = {num_features}; got shape {tuple(x.shape)}"
        )


def _torch_layout(x: Tensor) -> Tensor:
    """``x`` in the memory format of torch's batch-norm output and input gradient.

    Torch's CPU kernels write ``y`` and ``dx`` in ``x``'s suggested memory format:
    channels_last (or channels_last_3d) for an input strided like it, contiguous otherwise
    (any other permutation, a sliced or an expanded input). Giving the formulas ``x`` in
    that format makes every tensor they create, and so the output and the gradient, follow
    it; an input already in it is used as it is.
    """
    if x.is_contiguous() or x.layout != torch.strided:
        return x
    if not torch.compiler.is_compiling() and torch._C._are_functorch_transforms_active():
        return x  # batched tensors under torch.func have no strides to speak of
    from torch._prims_common import suggest_memory_format

    fmt = suggest_memory_format(x)
    return x if x.is_contiguous(memory_format=fmt) else x.contiguous(memory_format=fmt)


def _no_autocast(x: Tensor) -> contextlib.AbstractContextManager:
    """Autocast off for the layer's own ops: torch's layer keeps its input's dtype too."""
    device = x.device.type
    if torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device):
        return torch.autocast(device, enabled=False)
    return contextlib.nullcontext()


def _refuse_tracing() -> None:
    if torch.jit.is_tracing():
        raise TypeError(
            "bncourse.BatchNorm cannot be traced by TorchScript when it uses batch statistics "
            "(training mode, or no running statistics): its autograd Function is Python, which "
            "a saved trace cannot hold. Trace it in eval mode, use torch.compile, or trace "
            "bncourse.layer.to_torch(layer), torch's layer with the same state"
        )


# --------------------------------------------------------------------------------------
# The formulas as tensor functions
# --------------------------------------------------------------------------------------


def compact_forward(
    x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    r"""$y = \gamma\hat{x} + \beta$ with batch statistics.

    Returns ``(y, x_hat, mean, var, inv_std)``.

    ``var`` is the biased batch variance (what the transform divides by), computed in two
    passes like the NumPy reference: centre first, then average the squares, never as
    E[x^2] - E[x]^2. The centred tensor becomes ``x_hat`` in place, so the forward allocates
    one activation-sized tensor besides ``y``. float16/bfloat16 inputs are computed in
    float32: the statistics stay float32, ``y`` and ``x_hat`` are returned in the input's
    dtype. ``y`` is never the same tensor as ``x_hat``, so it may be modified in place.
    """
    dims = _dims(x)
    compute = _compute_dtype(x.dtype)
    xc = x if x.dtype == compute else x.to(compute)
    mean = xc.mean(dim=dims)
    centred = xc - _per_channel(mean, x)
    var = (centred * centred).mean(dim=dims)
    inv_std = torch.rsqrt(var + eps)
    x_hat = centred.mul_(_per_channel(inv_std, x))
    if weight is None:
        y = x_hat.clone() if bias is None else x_hat + _per_channel(bias, x)
    elif bias is None:
        y = x_hat * _per_channel(weight, x)
    else:
        y = torch.addcmul(_per_channel(bias, x), x_hat, _per_channel(weight, x))
    if y.dtype != x.dtype:
        y = y.to(x.dtype)
    if x_hat.dtype != x.dtype:
        x_hat = x_hat.to(x.dtype)
    return y, x_hat, mean, var, inv_std


def compact_backward(
    dy: Tensor | None,
    x_hat: Tensor,
    inv_std: Tensor,
    weight: Tensor | None,
    dx_hat: Tensor | None = None,
    dinv_std: Tensor | None = None,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    r"""$dx = \gamma (dy - \overline{dy} - \hat{x} \overline{dy\hat{x}}) / \sqrt{\sigma^2+\epsilon}$

    Returns ``(dx, dgamma, dbeta)``.

    Bars are per-channel means over the reduced axes, so this is the closed form of
    :func:`bncourse.functional.batch_norm_backward` with the ``1/m`` moved inside.

    ``dx_hat`` and ``dinv_std`` are gradients that reach ``x_hat`` and ``inv_std`` directly
    (a second backward through this one does that); ``x_hat`` adds its own term of the same
    form with $\gamma = 1$, and since $\partial s/\partial x_i = -s^2\hat{x}_i/m$ for
    $s = 1/\sqrt{\sigma^2+\epsilon}$, ``dinv_std`` adds $-s^2\hat{x}\,ds/m$. Every step is a
    differentiable tensor op, so autograd can differentiate this function again.
    ``dy`` may be ``None`` (then ``dgamma`` and ``dbeta`` are ``None``).
    """
    dims = _dims(x_hat)
    m = max(_values_per_channel(x_hat), 1)
    # In place saves a write; under torch.func transforms (vmap has no batching rule for
    # addcmul_) the out-of-place op is the fast one.
    in_place = torch.compiler.is_compiling() or not torch._C._are_functorch_transforms_active()
    if (dx_hat is None and dinv_std is None and dy is not None
            and x_hat.dtype == inv_std.dtype == dy.dtype):
        # First order, one dtype: the closed form in the fewest ops.
        dbeta = dy.sum(dim=dims)
        dgamma = (dy * x_hat).sum(dim=dims)
        scale = inv_std if weight is None else inv_std * weight
        k = scale / m
        # Two activation-sized writes: dx = -k*dbeta - k*dgamma*x_hat, then dx += scale*dy.
        dx = torch.addcmul(_per_channel(-dbeta * k, x_hat), x_hat,
                           _per_channel(-dgamma * k, x_hat))
        if in_place:
            return dx.addcmul_(dy, _per_channel(scale, x_hat)), dgamma, dbeta
        return torch.addcmul(dx, dy, _per_channel(scale, x_hat)), dgamma, dbeta
    out_dtype = x_hat.dtype
    compute = inv_std.dtype
    if x_hat.dtype != compute:
        x_hat = x_hat.to(compute)
    scale = inv_std if weight is None else inv_std * weight.to(compute)
    k = inv_std / m
    dbeta = dgamma = None
    shift = coeff = None  # per-channel: dx = shift + coeff * x_hat + direct terms
    if dy is not None:
        if dy.dtype != compute:
            dy = dy.to(compute)
        dbeta = dy.sum(dim=dims)
        dgamma = (dy * x_hat).sum(dim=dims)
        wk = k if weight is None else k * weight.to(compute)
        shift, coeff = -dbeta * wk, -dgamma * wk
    if dx_hat is not None:
        if dx_hat.dtype != compute:
            dx_hat = dx_hat.to(compute)
        s1 = -dx_hat.sum(dim=dims) * k
        s2 = -(dx_hat * x_hat).sum(dim=dims) * k
        shift = s1 if shift is None else shift + s1
        coeff = s2 if coeff is None else coeff + s2
    if dinv_std is not None:
        s3 = -dinv_std.to(compute) * inv_std * inv_std / m
        coeff = s3 if coeff is None else coeff + s3
    if coeff is None:
        dx = torch.zeros_like(x_hat)
    else:
        if shift is None:
            dx = x_hat * _per_channel(coeff, x_hat)
        else:
            dx = torch.addcmul(_per_channel(shift, x_hat), x_hat, _per_channel(coeff, x_hat))
    addcmul = torch.Tensor.addcmul_ if in_place else torch.addcmul
    if dy is not None:
        dx = addcmul(dx, dy, _per_channel(scale, x_hat))
    if dx_hat is not None:
        dx = addcmul(dx, dx_hat, _per_channel(inv_std, x_hat))
    if dx.dtype != out_dtype:
        dx = dx.to(out_dtype)
    return dx, dgamma, dbeta


def _jvp_formula(
    tx: Tensor | None, tw: Tensor | None, tb: Tensor | None,
    x_hat: Tensor, inv_std: Tensor, weight: Tensor | None, out_dtype: torch.dtype,
) -> tuple[Tensor, Tensor, Tensor]:
    r"""Tangents of ``(y, x_hat, inv_std)`` for tangents ``tx``, ``tw``, ``tb`` of the inputs.

    $\dot{\hat{x}} = s(\dot{x} - \overline{\dot{x}} - \hat{x}\,\overline{\hat{x}\dot{x}})$,
    $\dot{s} = -s^2\,\overline{\hat{x}\dot{x}}$ and
    $\dot{y} = \gamma\dot{\hat{x}} + \dot\gamma\hat{x} + \dot\beta$.
    """
    dims = _dims(x_hat)
    compute = inv_std.dtype
    xh = x_hat if x_hat.dtype == compute else x_hat.to(compute)
    if tx is None:
        t_hat = torch.zeros_like(xh)
        t_inv = torch.zeros_like(inv_std)
    else:
        txc = tx if tx.dtype == compute else tx.to(compute)
        mean_t = txc.mean(dim=dims)
        mean_xt = (xh * txc).mean(dim=dims)
        t_hat = (txc - _per_channel(mean_t, xh) - xh * _per_channel(mean_xt, xh)) \
            * _per_channel(inv_std, xh)
        t_inv = -inv_std * inv_std * mean_xt
    ty = t_hat if weight is None else t_hat * _per_channel(weight.to(compute), xh)
    if tw is not None:
        ty = ty + xh * _per_channel(tw.to(compute), xh)
    if tb is not None:
        ty = ty + _per_channel(tb.to(compute), xh)
    return ty.to(out_dtype), t_hat.to(out_dtype), t_inv


def staged_batch_norm(x: Tensor, weight: Tensor, bias: Tensor, eps: float = 1e-5) -> Tensor:
    """The formula as separate tensor ops (mean, variance, normalize, scale, shift).

    Autograd differentiates it node by node and saves the intermediates it needs; the
    course compares its time and memory with :class:`BatchNormFunction`.
    """
    dims = _dims(x)
    mean = x.mean(dim=dims, keepdim=True)
    centred = x - mean
    var = (centred * centred).mean(dim=dims, keepdim=True)
    x_hat = centred / torch.sqrt(var + eps)
    return x_hat * _per_channel(weight, x) + _per_channel(bias, x)


def _update_running(
    running: Tensor, batch: Tensor, momentum: float
) -> None:
    """``running <- (1 - momentum) running + momentum batch``, in place, in float32 at least."""
    if running.dtype == batch.dtype:
        running.mul_(1.0 - momentum).add_(batch, alpha=momentum)
    else:
        running.copy_(running.to(batch.dtype).mul_(1.0 - momentum).add_(batch, alpha=momentum))


def _core_forward(x, weight, bias, eps, running_mean=None, running_var=None, momentum=0.0):
    y, x_hat, mean, var, inv_std = compact_forward(x, weight, bias, eps)
    m = _values_per_channel(x)
    if running_mean is not None and running_var is not None and m > 0:
        _update_running(running_mean, mean, momentum)
        _update_running(running_var, var * (m / (m - 1)), momentum)
    return y, mean, var, x_hat, inv_std


def _core_setup_context(ctx, inputs, output) -> None:
    weight = inputs[1]
    _, mean, var, x_hat, inv_std = output
    ctx.save_for_backward(x_hat, inv_std, weight)
    ctx.save_for_forward(x_hat, inv_std, weight)
    ctx.mark_non_differentiable(mean, var)
    ctx.set_materialize_grads(False)
    ctx.bias_dtype = None if inputs[2] is None else inputs[2].dtype


def _core_backward(ctx, dy, _dmean, _dvar, dx_hat, dinv_std):
    x_hat, inv_std, weight = ctx.saved_tensors
    if dy is None and dx_hat is None and dinv_std is None:
        return None, None, None, None, None, None, None
    dx, dgamma, dbeta = compact_backward(dy, x_hat, inv_std, weight, dx_hat, dinv_std)
    return _backward_result(ctx, weight, dx, dgamma, dbeta)


def _backward_result(ctx, weight, dx, dgamma, dbeta):
    """The seven gradients a core Function returns: parameters' in their own dtypes, and
    ``None`` for inputs that need none."""
    if dgamma is not None and weight is not None and dgamma.dtype != weight.dtype:
        dgamma = dgamma.to(weight.dtype)
    if dbeta is not None and ctx.bias_dtype is not None and dbeta.dtype != ctx.bias_dtype:
        dbeta = dbeta.to(ctx.bias_dtype)
    return (
        dx if ctx.needs_input_grad[0] else None,
        dgamma if ctx.needs_input_grad[1] else None,
        dbeta if ctx.needs_input_grad[2] else None,
        None, None, None, None,
    )


def _core_jvp(ctx, tx, tw, tb, *_):
    x_hat, inv_std, weight = ctx.saved_tensors
    ty, t_hat, t_inv = _jvp_formula(tx, tw, tb, x_hat, inv_std, weight, x_hat.dtype)
    return ty, None, None, t_hat, t_inv


class _BatchNormCore(torch.autograd.Function):
    """The Function: outputs ``(y, mean, var, x_hat, inv_std)``; see :class:`BatchNormFunction`.

    ``setup_context`` style with ``generate_vmap_rule``, as ``torch.func`` and
    ``torch.compile`` require.
    """

    generate_vmap_rule = True
    forward = staticmethod(_core_forward)
    setup_context = staticmethod(_core_setup_context)
    backward = staticmethod(_core_backward)
    jvp = staticmethod(_core_jvp)


class _BatchNormCoreCompiled(torch.autograd.Function):
    """The same Function without ``jvp``, for the graph ``torch.compile`` traces.

    Dynamo refuses a Function with a custom ``jvp`` (a graph break at every layer in
    training mode, and ``fullgraph=True`` fails); forward-mode AD is ``torch.func``'s
    business, which gets :class:`_BatchNormCore`.
    """

    generate_vmap_rule = True
    forward = staticmethod(_core_forward)
    setup_context = staticmethod(_core_setup_context)
    backward = staticmethod(_core_backward)


#: A first-order backward forms ``sum(dy * x_hat)`` as ``inv_std * (sum(dy * x) -
#: mean * sum(dy))``, which skips centring ``x`` but loses about ``log2(1 + |mean| * inv_std)``
#: bits to cancellation; past this ratio of ``|mean|`` to the standard deviation it centres
#: ``x`` first, as the forward does.
EAGER_CANCELLATION_LIMIT = 4.0


def _eager_forward(ctx, x, weight, bias, eps, running_mean, running_var, momentum):
    """The forward in few passes: ``y = x * scale + shift`` with per-channel vectors.

    ``scale = gamma * inv_std`` and ``shift = beta - mean * scale``; with contiguous spatial
    axes it is ``(x - mean) * scale + beta``, from the centred input it already has. Saves
    ``x`` (the input: no new activation-sized tensor), ``mean``, ``inv_std`` and ``weight``;
    the centred input, the one activation-sized allocation, becomes ``y``.
    """
    dims = _dims(x)
    compute = _compute_dtype(x.dtype)
    xc = x if x.dtype == compute else x.to(compute)
    saved_weight = weight
    if weight is not None and weight.dtype != compute:
        weight = weight.to(compute)
    bias_dtype = None if bias is None else bias.dtype
    if bias is not None and bias.dtype != compute:  # no call at all when it needs no cast
        bias = bias.to(compute)
    m = _values_per_channel(x)
    mean = xc.mean(dim=dims)
    buf = xc - _per_channel(mean, x)
    if x.dim() > 2 and buf.is_contiguous() and m > 0:
        # Each (sample, channel) row is contiguous: its norm reads it once and writes
        # nothing, and the centred values stay in buf for y.
        n, c = x.shape[0], x.shape[1]
        rows = torch.linalg.vector_norm(buf.view(n * c, -1), dim=1)
        var = rows.square_().view(n, c).sum(dim=0).div_(m)
        inv_std = torch.rsqrt(var + eps)
        scale = inv_std if weight is None else inv_std * weight
        # Two broadcast operands in one kernel are slower than two passes with one each.
        y = buf.mul_(_per_channel(scale, x))
        if bias is not None:
            y = y.add_(_per_channel(bias, x))
    else:
        var = buf.square_().mean(dim=dims)
        inv_std = torch.rsqrt(var + eps)
        scale = inv_std if weight is None else inv_std * weight
        shift = (torch.mul(mean, scale).neg_() if bias is None
                 else torch.addcmul(bias, mean, scale, value=-1))
        if x.dim() == 2:
            # Per-channel vectors run along the contiguous axis: one fused pass.
            y = torch.addcmul(_per_channel(shift, x), xc, _per_channel(scale, x), out=buf)
        else:
            y = torch.mul(xc, _per_channel(scale, x), out=buf).add_(_per_channel(shift, x))
    if y.dtype != x.dtype:
        y = y.to(x.dtype)
    if running_mean is not None and running_var is not None and m > 0:
        _update_running(running_mean, mean, momentum)
        _update_running(running_var, var * (m / (m - 1)), momentum)
    ctx.save_for_backward(x, mean, inv_std, saved_weight)
    ctx.save_for_forward(x, mean, inv_std, saved_weight)
    ctx.mark_non_differentiable(mean, var)
    ctx.set_materialize_grads(False)
    ctx.eps = eps
    ctx.bias_dtype = bias_dtype
    return y, mean, var


def _recompute_normalized(x: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """``(x_hat, inv_std)`` from ``x`` in differentiable ops, in the compute dtype."""
    dims = _dims(x)
    compute = _compute_dtype(x.dtype)
    xc = x if x.dtype == compute else x.to(compute)
    centred = xc - _per_channel(xc.mean(dim=dims), x)
    inv_std = torch.rsqrt((centred * centred).mean(dim=dims) + eps)
    return centred * _per_channel(inv_std, x), inv_std


def _eager_first_order(dy, x, mean, inv_std, weight):
    """``(dx, dgamma, dbeta)`` in the fewest passes; ``x`` and ``dy`` of one dtype.

    ``dx = a * x + b + scale * dy`` with per-channel ``a``, ``b`` and ``scale``, after the two
    per-channel sums ``sum(dy)`` and ``sum(dy * x_hat)``.
    """
    dims = _dims(x)
    m = max(_values_per_channel(x), 1)
    dbeta = dy.sum(dim=dims)
    if (x.device.type == "cpu"  # elsewhere the check would wait for the device
            and float((mean * inv_std).abs_().max()) <= EAGER_CANCELLATION_LIMIT):
        buf = x * dy  # x first: the product, and so dx, takes x's memory format
        dgamma = torch.addcmul(buf.sum(dim=dims), mean, dbeta, value=-1).mul_(inv_std)
    else:
        buf = (x - _per_channel(mean, x)).mul_(dy)
        dgamma = buf.sum(dim=dims).mul_(inv_std)
    scale = inv_std if weight is None else inv_std * weight
    a = (scale * inv_std).mul_(dgamma).mul_(-1.0 / m)
    b = (scale * dbeta).mul_(-1.0 / m).addcmul_(a, mean, value=-1)
    if x.dim() == 2:
        dx = torch.addcmul(_per_channel(b, x), x, _per_channel(a, x), out=buf)
        return dx.addcmul_(dy, _per_channel(scale, x)), dgamma, dbeta
    dx = torch.mul(x, _per_channel(a, x), out=buf).add_(_per_channel(b, x))
    return dx.addcmul_(dy, _per_channel(scale, x)), dgamma, dbeta


def _eager_backward(ctx, dy, _dmean, _dvar):
    """First order in the fewest passes; under ``create_graph``, differentiable from ``x``.

    ``torch.is_grad_enabled()`` is True in a backward exactly when it runs with
    ``create_graph=True``. Then ``x_hat`` and ``inv_std`` are recomputed from the saved
    input with differentiable ops and :func:`compact_backward` runs on them, so autograd
    records a graph back to ``x``, ``weight`` and ``dy`` and can differentiate it again.
    """
    if dy is None:
        return None, None, None, None, None, None, None
    x, mean, inv_std, weight = ctx.saved_tensors
    if (torch.is_grad_enabled() or x.dtype != inv_std.dtype or dy.dtype != x.dtype
            or x.numel() == 0 or torch._C._are_functorch_transforms_active()
            or torch._C._functorch.is_legacy_batchedtensor(dy)):
        # Also when a vmap runs over the backward (gradcheck's batched gradients use the
        # legacy one): there, no writes into a buffer made here and no reading of values.
        x_hat, inv_std = _recompute_normalized(x, ctx.eps)
        dx, dgamma, dbeta = compact_backward(dy, x_hat, inv_std, weight)
        if dx.dtype != x.dtype:
            dx = dx.to(x.dtype)
    else:
        dx, dgamma, dbeta = _eager_first_order(dy, x, mean, inv_std, weight)
    return _backward_result(ctx, weight, dx, dgamma, dbeta)


def _eager_jvp(ctx, tx, tw, tb, *_):
    x, mean, inv_std, weight = ctx.saved_tensors
    compute = inv_std.dtype
    xc = x if x.dtype == compute else x.to(compute)
    x_hat = (xc - _per_channel(mean, x)) * _per_channel(inv_std, x)
    ty, _, _ = _jvp_formula(tx, tw, tb, x_hat, inv_std, weight, x.dtype)
    return ty, None, None


class _BatchNormCoreEager(torch.autograd.Function):
    """The Function for plain eager calls: outputs ``(y, mean, var)``, saves ``x``.

    ``ctx`` in ``forward``, because ``Function.apply`` binds the forward's signature with
    ``inspect`` on every call when ``setup_context`` is defined (tens of microseconds a
    step). It saves the input, as torch's layer does, with ``mean`` and ``inv_std``; its
    backward takes a first-order path in the fewest passes over memory, and under
    ``create_graph=True`` recomputes ``x_hat`` from ``x`` with differentiable ops (see
    :func:`_eager_backward`), so derivatives of every order stay exact.
    """

    forward = staticmethod(_eager_forward)
    backward = staticmethod(_eager_backward)
    jvp = staticmethod(_eager_jvp)


def _core_apply(*args):
    """Apply the Function: one class per context, all computing the same ``(y, mean, var)``.

    Under ``torch.compile``, the class without ``jvp`` (Dynamo traces it into the graph);
    under a ``torch.func`` transform, the ``setup_context`` class with ``jvp`` and a vmap
    rule; otherwise the lean eager class, which saves ``x`` rather than ``x_hat``.
    """
    if torch.compiler.is_compiling():
        return _BatchNormCoreCompiled.apply(*args)[:3]
    if torch._C._are_functorch_transforms_active():
        return _BatchNormCore.apply(*args)[:3]
    return _BatchNormCoreEager.apply(*args)


class BatchNormFunction(_BatchNormCore):
    """Training-mode batch normalization with the analytic backward, differentiable again.

    ``apply(x, weight, bias, eps, running_mean=None, running_var=None, momentum=0.0)``
    returns ``(y, mean, var)``: ``mean`` and ``var`` are the biased batch statistics,
    non-differentiable. ``weight`` and ``bias`` may be ``None``. When running buffers are
    given they are updated in place during the forward (``momentum`` weights the new
    batch; the unbiased variance is stored; an empty batch leaves them as they are).

    ``apply`` runs the Function the layer runs in the same context (see the module
    docstring): in plain eager mode the one that saves ``x``, ``mean`` and ``inv_std`` and
    recomputes ``x_hat`` when its backward is differentiated; under ``torch.func`` and
    ``torch.compile`` its base class, whose forward, backward, ``jvp`` and vmap rule are
    defined here, with two more outputs, ``x_hat`` and ``inv_std``: they are what it saves
    for backward, and, saved as outputs, they keep the graph back to ``x`` when the backward
    is itself differentiated. ``apply`` returns the three outputs a caller uses.
    """

    @classmethod
    def apply(cls, x, weight, bias, eps, running_mean=None, running_var=None,  # type: ignore[override]
              momentum=0.0):
        y, mean, var = _core_apply(x, weight, bias, eps, running_mean, running_var, momentum)
        return y, mean, var


def _batch_norm_train(x, weight, bias, eps, running_mean=None, running_var=None, momentum=0.0):
    return _core_apply(x, weight, bias, eps, running_mean, running_var, momentum)[0]


class _FirstOrderFunction(torch.autograd.Function):
    """What :func:`compiled_batch_norm` compiles: forward and compact backward, first order.

    The double-backward machinery of :class:`BatchNormFunction` (``x_hat`` and ``inv_std``
    as outputs) would make the compiled graph write and read them as outputs; the
    benchmark path keeps the plain closed form, and a second backward through it raises.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, eps):  # type: ignore[override]
        y, x_hat, mean, var, inv_std = compact_forward(x, weight, bias, eps)
        ctx.save_for_backward(x_hat, inv_std, weight)
        ctx.mark_non_differentiable(mean, var)
        return y, mean, var

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy, _dmean, _dvar):  # type: ignore[override]
        x_hat, inv_std, weight = ctx.saved_tensors
        dx, dgamma, dbeta = compact_backward(dy, x_hat, inv_std, weight)
        return (
            dx if ctx.needs_input_grad[0] else None,
            dgamma if ctx.needs_input_grad[1] else None,
            dbeta if ctx.needs_input_grad[2] else None,
            None,
        )


# --------------------------------------------------------------------------------------
# The compiled path
# --------------------------------------------------------------------------------------

#: How many input shapes :func:`compiled_batch_norm` compiles with their sizes fixed (the
#: fastest kernels, one compile each); later shapes share dynamic-shape graphs.
COMPILE_STATIC_SHAPES = 8
#: Dynamo's recompile limit while :func:`compiled_batch_norm` compiles: per compiled function,
#: the static shapes above, or the dynamic graphs (one per number of dimensions, dtype,
#: device, ``eps`` and so on, not per shape). Past it, compiling raises.
COMPILE_RECOMPILE_LIMIT = 64

_COMPILED: dict = {}
_COMPILED_KEYS: dict = {}


def _compiled_target(x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
    return _FirstOrderFunction.apply(x, weight, bias, eps)[0]


def _compiled_target_dynamic(x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
    # The same as _compiled_target; a function of its own, so that Dynamo keeps its cache
    # (and counts its recompiles) apart from the static shapes'.
    return _FirstOrderFunction.apply(x, weight, bias, eps)[0]


def compiled_batch_norm(x: Tensor, weight: Tensor, bias: Tensor, eps: float = 1e-5) -> Tensor:
    """Training-mode BN: the compact forward and backward compiled whole by ``torch.compile``.

    Opt-in (compiling needs a C++ compiler and takes seconds per shape); the benchmark uses
    it to show what fusing the closed form buys. One compiled entry covers a first-order
    autograd Function with :func:`compact_forward` and :func:`compact_backward`, so its
    forward and its analytic backward each become one fused kernel. Running statistics are
    not updated, and the backward cannot be differentiated again (use the layer for that).

    Any number of shapes: the first :data:`COMPILE_STATIC_SHAPES` distinct inputs (shape,
    dtype, device, ``eps``, ...) are compiled with their sizes fixed; every later one goes to
    a second compiled function with dynamic shapes, where one graph per number of dimensions
    and dtype serves all sizes. Both compile with Dynamo's recompile limit raised to
    :data:`COMPILE_RECOMPILE_LIMIT`; past it this function raises Dynamo's
    ``FailOnRecompileLimitHit`` instead of silently running eagerly.
    """
    _check_input(x)
    if _check_training_batch(x) == 0:
        return _compiled_target(x, weight, bias, eps)
    key = (
        tuple(x.shape), x.dtype, x.device, x.requires_grad, float(eps),
        None if weight is None else (weight.dtype, weight.requires_grad),
        None if bias is None else (bias.dtype, bias.requires_grad),
        torch.is_grad_enabled(),
    )
    mode = _COMPILED_KEYS.get(key)
    if mode is not None:
        return _COMPILED[mode](x, weight, bias, eps)
    if not _COMPILED:
        _COMPILED["static"] = torch.compile(_compiled_target, dynamic=False)
        _COMPILED["dynamic"] = torch.compile(_compiled_target_dynamic, dynamic=True)
    n_static = sum(1 for m in _COMPILED_KEYS.values() if m == "static")
    mode = "static" if n_static < COMPILE_STATIC_SHAPES else "dynamic"
    import torch._dynamo as dynamo

    with dynamo.config.patch(
        recompile_limit=COMPILE_RECOMPILE_LIMIT, fail_on_recompile_limit_hit=True
    ):
        y = _COMPILED[mode](x, weight, bias, eps)
    _COMPILED_KEYS[key] = mode
    return y


# --------------------------------------------------------------------------------------
# The functional form and the module
# --------------------------------------------------------------------------------------


def batch_norm(
    x: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> Tensor:
    """Functional form with the signature of ``torch.nn.functional.batch_norm``.

    In training mode the batch statistics normalize ``x`` and, when running buffers are
    given, update them in place (PyTorch's convention: ``momentum`` weights the new batch,
    the unbiased variance is stored). In eval mode the running statistics normalize ``x``.
    float16/bfloat16 inputs are computed in float32 and returned in their own dtype.
    """
    _check_input(x)
    return _batch_norm_checked_input(x, running_mean, running_var, weight, bias, training,
                                     momentum, eps)


def _batch_norm_checked_input(x, running_mean, running_var, weight, bias, training, momentum,
                              eps):
    """:func:`batch_norm` for an ``x`` that passed :func:`_check_input` (the layer checks it
    first, as torch's does, and need not check it twice)."""
    c = x.shape[1]
    for name, v in (("running_mean", running_mean), ("running_var", running_var),
                    ("weight", weight), ("bias", bias)):
        if v is not None and v.shape != (c,):  # torch.Size is a tuple: no conversion
            raise ShapeMismatchError(
                f"{name} must have shape (C,) = ({c},), one value per channel; "
                f"got {tuple(v.shape)}"
            )
    dtype = x.dtype
    # The usual case, every tensor in the input's dtype, without building the keyword
    # arguments of the general rule.
    if not ((weight is None or weight.dtype == dtype) and (bias is None or bias.dtype == dtype)
            and (running_mean is None or running_mean.dtype == dtype)
            and (running_var is None or running_var.dtype == dtype)):
        _check_dtypes(x, weight=weight, bias=bias, running_mean=running_mean,
                      running_var=running_var)
    x = _torch_layout(x)
    if training:
        if (running_mean is None) != (running_var is None):
            raise ValueError(
                "running_mean and running_var must either both be None or neither be None"
            )
        if not float(eps) > 0.0:
            raise ValueError(
                f"eps must be positive when batch statistics normalize the input (training "
                f"mode, or no running statistics); got eps = {eps}. With eps = 0 a channel "
                f"of equal values divides by zero; torch raises ValueError here too"
            )
        _check_training_batch(x)
        _refuse_tracing()
        with _no_autocast(x):
            return _batch_norm_train(x, weight, bias, eps, running_mean, running_var,
                                     float(momentum))
    if running_mean is None or running_var is None:
        raise RunningStatsError(
            "eval-mode batch normalization needs running_mean and running_var (or neither, "
            "with training=True: batch statistics); got "
            f"running_mean={'None' if running_mean is None else 'a tensor'}, "
            f"running_var={'None' if running_var is None else 'a tensor'}"
        )
    with _no_autocast(x):
        compute = _compute_dtype(x.dtype)
        inv_std = torch.rsqrt(running_var.to(compute) + eps)
        scale = inv_std if weight is None else inv_std * weight.to(compute)
        shift = -running_mean.to(compute) * scale
        if bias is not None:
            shift = shift + bias.to(compute)
        y = torch.addcmul(_per_channel(shift, x), _grad_in_layout(x), _per_channel(scale, x))
    return y if y.dtype == x.dtype else y.to(x.dtype)


def _grad_in_layout(x: Tensor) -> Tensor:
    """``x``, or an alias of it whose gradient comes back in ``x``'s channels_last format.

    In eval mode the input gradient is ``dy * scale``, which autograd lays out like ``dy``;
    torch's kernel writes it in the input's format. For a channels_last input that requires
    grad (in eager mode) the alias converts the gradient that flows through it.
    """
    if (x.is_contiguous() or not x.requires_grad or not torch.is_grad_enabled()
            or torch.compiler.is_compiling() or torch._C._are_functorch_transforms_active()):
        return x
    fmt = {4: torch.channels_last, 5: torch.channels_last_3d}.get(x.dim())
    if fmt is None or not x.is_contiguous(memory_format=fmt):
        return x
    alias = x.view_as(x)
    alias.register_hook(lambda g: g.contiguous(memory_format=fmt))
    return alias


class BatchNorm(_BatchNorm):
    r"""Batch normalization over axis 1 of an ``(N, C)`` or ``(N, C, *spatial)`` input.

    $y = \gamma \hat{x} + \beta$. In training mode $\hat{x}$ uses the batch mean and the
    biased batch variance, and the running statistics move towards the batch's
    (``momentum`` weights the new batch; ``momentum=None`` keeps a cumulative average; the
    unbiased variance is stored). In eval mode $\hat{x}$ uses the running statistics.

    Parameters ``weight`` ($\gamma$, ones) and ``bias`` ($\beta$, zeros) exist when
    ``affine`` (``bias=False`` drops $\beta$); buffers ``running_mean`` (zeros),
    ``running_var`` (ones) and ``num_batches_tracked`` exist when ``track_running_stats``,
    otherwise they are ``None`` and batch statistics are used in eval mode too, as in torch.
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        bias: bool = True,
    ) -> None:
        try:
            # Any integer type (np.int64 from a NumPy shape too), as in torch; not 3.0.
            num_features = operator.index(num_features)
        except TypeError:
            raise ValueError(
                f"num_features must be a positive integer; got {num_features!r}"
            ) from None
        if num_features < 1:
            raise ValueError(f"num_features must be a positive integer; got {num_features!r}")
        if not float(eps) >= 0.0:
            raise ValueError(f"eps must be a non-negative number; got {eps}")
        if momentum is not None and not 0.0 <= float(momentum) <= 1.0:
            raise ValueError(
                f"momentum weights the new batch (PyTorch's convention) and must lie in "
                f"[0, 1], or be None for a cumulative average; got {momentum}"
            )
        super().__init__(num_features, float(eps), momentum, affine, track_running_stats,
                         device=device, dtype=dtype, bias=bias)

    def _check_input_dim(self, input: Tensor) -> None:
        _check_input(input)

    def __prepare_scriptable__(self):
        raise TypeError(
            "bncourse.BatchNorm does not support torch.jit.script: its training-mode forward "
            "is a custom autograd Function written in Python, which TorchScript cannot "
            "compile. Use torch.compile, or script bncourse.layer.to_torch(layer), torch's "
            "layer with the same parameters and buffers"
        )

    def forward(self, x: Tensor) -> Tensor:
        _check_input(x)
        _check_channels(x, self.num_features)
        # The same decisions as torch's _BatchNorm.forward, in the same order.
        factor = 0.0 if self.momentum is None else float(self.momentum)
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                factor = 1.0 / float(self.num_batches_tracked)
        # Buffers are looked up once (each lookup goes through Module.__getattr__).
        running_mean, running_var = self.running_mean, self.running_var
        if self.training:
            use_batch_stats = True
        else:
            use_batch_stats = running_mean is None and running_var is None
        track = not self.training or self.track_running_stats
        return _batch_norm_checked_input(
            x,
            running_mean if track else None,
            running_var if track else None,
            self.weight,
            self.bias,
            training=use_batch_stats,
            momentum=factor,
            eps=self.eps,
        )


def to_torch(layer: BatchNorm, spatial_dims: int = 2) -> _BatchNorm:
    """torch's ``BatchNorm1d/2d/3d`` with the settings of ``layer``, sharing its tensors.

    ``spatial_dims`` picks the class: 0 or 1 (``(N, C)`` or ``(N, C, L)`` inputs) gives
    ``BatchNorm1d``, 2 gives ``BatchNorm2d``, 3 gives ``BatchNorm3d``. The parameters and
    buffers are the same tensor objects (an optimizer holding them keeps working), and the
    training flag is copied. For what torch's layer offers and this one does not
    (TorchScript, quantization-aware fusion).
    """
    classes = {0: nn.BatchNorm1d, 1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
    if spatial_dims not in classes:
        raise ValueError(f"spatial_dims must be 0, 1, 2 or 3; got {spatial_dims!r}")
    if not isinstance(layer, BatchNorm):
        raise TypeError(f"to_torch converts a bncourse.BatchNorm; got {type(layer).__name__}")
    out = classes[spatial_dims](
        layer.num_features, layer.eps, layer.momentum, layer.affine, layer.track_running_stats,
        device="meta", bias=layer.bias is not None,
    )
    for name in ("weight", "bias"):
        if name in layer._parameters:
            out._parameters[name] = layer._parameters[name]
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        if name in layer._buffers:
            out._buffers[name] = layer._buffers[name]
    out.train(layer.training)
    return out


# --------------------------------------------------------------------------------------
# torch.ao.quantization.fuse_modules: (Conv/Linear, BatchNorm[, ReLU]) patterns
# --------------------------------------------------------------------------------------

_TORCH_BN_SPATIAL = {nn.BatchNorm1d: 1, nn.BatchNorm2d: 2, nn.BatchNorm3d: 3}


def _fuse_through_torch(torch_fuser, spatial_dims: int):
    def fuse(is_qat, *modules):
        converted = [to_torch(m, spatial_dims) if isinstance(m, BatchNorm) else m
                     for m in modules]
        return torch_fuser(is_qat, *converted)

    return fuse


def _fuse_needs_dims(is_qat, *modules):
    raise TypeError(
        "fusing bncourse.BatchNorm with the module after it needs torch's BatchNorm2d or "
        "BatchNorm3d, which fix the number of spatial dimensions that this layer leaves "
        "open: convert it first with bncourse.layer.to_torch(layer, spatial_dims)"
    )


def _register_fusion_patterns() -> None:
    """Register (…, bncourse.BatchNorm, …) beside each of torch's (…, BatchNormNd, …) patterns.

    Where a convolution or linear layer comes first, it fixes the dimensions and the pattern
    is fused through torch's fuser; (BatchNorm, ReLU) leaves them open and is refused with a
    message (torch's own error would not say what to do).
    """
    try:
        from torch.ao.quantization import fuser_method_mappings
        table = fuser_method_mappings._DEFAULT_OP_LIST_TO_FUSER_METHOD
    except (ImportError, AttributeError):  # another torch: fuse_modules then refuses loudly
        return
    for pattern, fuser in list(table.items()):
        bns = [t for t in pattern if t in _TORCH_BN_SPATIAL]
        if len(bns) != 1:
            continue
        ours = tuple(BatchNorm if t is bns[0] else t for t in pattern)
        if ours in table:
            continue
        if pattern[0] in _TORCH_BN_SPATIAL:
            table[ours] = _fuse_needs_dims
        else:
            table[ours] = _fuse_through_torch(fuser, _TORCH_BN_SPATIAL[bns[0]])


_register_fusion_patterns()
