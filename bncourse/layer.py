"""Batch normalization as a PyTorch module, written from scratch.

:class:`BatchNorm` is a drop-in for ``torch.nn.BatchNorm1d``, ``BatchNorm2d`` and
``BatchNorm3d``: the same parameter and buffer names, the same state_dict, the same outputs,
gradients and running buffers. It calls none of torch's batch-norm functions; the
training-mode forward is :class:`BatchNormFunction`, a custom autograd Function whose
backward is the compact closed form of :func:`bncourse.functional.batch_norm_backward`.
It saves one activation-sized tensor (``x_hat``) for the backward pass.

The formulas also exist here as plain tensor functions: :func:`compact_forward` and
:func:`compact_backward` (what the Function runs, and what the compiled path compiles),
and :func:`staged_batch_norm` (the formula as separate tensor ops, differentiated by
autograd, for comparison).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = [
    "BatchNorm",
    "BatchNormFunction",
    "batch_norm",
    "compact_forward",
    "compact_backward",
    "staged_batch_norm",
    "compiled_batch_norm",
]


def _dims(x: Tensor) -> list[int]:
    return [0, *range(2, x.dim())]


def _per_channel(v: Tensor, x: Tensor) -> Tensor:
    return v.view((1, -1) + (1,) * (x.dim() - 2))


def _check_input(x: Tensor) -> None:
    if not isinstance(x, Tensor):
        raise ValueError(f"input must be a torch.Tensor; got {type(x).__name__}")
    if x.dim() < 2:
        raise ValueError(
            f"input must have at least 2 dimensions (N, C) or (N, C, *spatial); "
            f"got shape {tuple(x.shape)}"
        )
    if not x.is_floating_point():
        raise ValueError(
            f"input must have a floating dtype; got {x.dtype}. Convert it first, e.g. x.float()"
        )


def _values_per_channel(x: Tensor) -> int:
    return x.numel() // x.shape[1] if x.shape[1] else 0


def _check_training_batch(x: Tensor) -> int:
    m = _values_per_channel(x)
    if m < 2:
        raise ValueError(
            f"Expected more than 1 value per channel when training, got input size "
            f"{tuple(x.shape)}: batch normalization in training mode needs m >= 2 values per "
            f"channel (the variance of one value is 0). Use a larger batch or eval()"
        )
    return m


def _check_channels(x: Tensor, num_features: int) -> None:
    if x.shape[1] != num_features:
        raise ValueError(
            f"input has {x.shape[1]} channels on axis 1 but the layer was built for "
            f"num_features = {num_features}; got shape {tuple(x.shape)}"
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
    one activation-sized tensor besides ``y``.
    """
    dims = _dims(x)
    mean = x.mean(dim=dims)
    centred = x - _per_channel(mean, x)
    var = (centred * centred).mean(dim=dims)
    inv_std = torch.rsqrt(var + eps)
    x_hat = centred.mul_(_per_channel(inv_std, x))
    if weight is None:
        y = x_hat if bias is None else x_hat + _per_channel(bias, x)
    elif bias is None:
        y = x_hat * _per_channel(weight, x)
    else:
        y = torch.addcmul(_per_channel(bias, x), x_hat, _per_channel(weight, x))
    return y, x_hat, mean, var, inv_std


def compact_backward(
    dy: Tensor, x_hat: Tensor, inv_std: Tensor, weight: Tensor | None
) -> tuple[Tensor, Tensor, Tensor]:
    r"""$dx = \gamma (dy - \overline{dy} - \hat{x} \overline{dy\hat{x}}) / \sqrt{\sigma^2+\epsilon}$

    Returns ``(dx, dgamma, dbeta)``.

    Bars are per-channel means over the reduced axes, so this is the closed form of
    :func:`bncourse.functional.batch_norm_backward` with the ``1/m`` moved inside.
    """
    dims = _dims(x_hat)
    m = _values_per_channel(x_hat)
    dbeta = dy.sum(dim=dims)
    dgamma = (dy * x_hat).sum(dim=dims)
    scale = inv_std if weight is None else inv_std * weight
    k = scale / m
    # Two activation-sized writes: dx = -k*dbeta - k*dgamma*x_hat, then dx += scale*dy.
    dx = torch.addcmul(_per_channel(-dbeta * k, x_hat), x_hat, _per_channel(-dgamma * k, x_hat))
    dx.addcmul_(dy, _per_channel(scale, x_hat))
    return dx, dgamma, dbeta


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


class BatchNormFunction(torch.autograd.Function):
    """Training-mode batch normalization with the analytic backward.

    ``forward(x, weight, bias, eps) -> (y, mean, var)``: ``mean`` and ``var`` are the biased
    batch statistics (for the running-statistics update); they are returned as
    non-differentiable outputs. ``weight`` and ``bias`` may be ``None`` (``affine=False``).
    Saved for backward: ``x_hat`` (activation-sized), ``inv_std`` and ``weight`` (per channel).
    """

    @staticmethod
    def forward(ctx, x, weight, bias, eps):  # type: ignore[override]
        y, x_hat, mean, var, inv_std = compact_forward(x, weight, bias, eps)
        ctx.save_for_backward(x_hat, inv_std, weight)
        ctx.mark_non_differentiable(mean, var)
        return y, mean, var

    @staticmethod
    def backward(ctx, dy, _dmean, _dvar):  # type: ignore[override]
        x_hat, inv_std, weight = ctx.saved_tensors
        dx, dgamma, dbeta = compact_backward(dy, x_hat, inv_std, weight)
        return (
            dx if ctx.needs_input_grad[0] else None,
            dgamma if ctx.needs_input_grad[1] else None,
            dbeta if ctx.needs_input_grad[2] else None,
            None,
        )


_COMPILED: dict[float, object] = {}


def compiled_batch_norm(x: Tensor, weight: Tensor, bias: Tensor, eps: float = 1e-5) -> Tensor:
    """Training-mode BN: :class:`BatchNormFunction` compiled whole by ``torch.compile``.

    Opt-in (compiling needs a C++ compiler and takes seconds per shape); the benchmark uses
    it to show what fusing the closed form buys. One compiled entry covers the Function, so
    its forward and its analytic backward each become one fused kernel. Running statistics
    are not updated.
    """
    _check_input(x)
    _check_training_batch(x)
    fn = _COMPILED.get(eps)
    if fn is None:
        fn = torch.compile(
            lambda x, w, b: BatchNormFunction.apply(x, w, b, eps)[0], dynamic=False
        )
        _COMPILED[eps] = fn
    return fn(x, weight, bias)


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
    """
    _check_input(x)
    c = x.shape[1]
    for name, v in (("running_mean", running_mean), ("running_var", running_var),
                    ("weight", weight), ("bias", bias)):
        if v is not None and tuple(v.shape) != (c,):
            raise ValueError(
                f"{name} must have shape (C,) = ({c},), one value per channel; "
                f"got {tuple(v.shape)}"
            )
    if training:
        m = _check_training_batch(x)
        y, mean, var = BatchNormFunction.apply(x, weight, bias, eps)
        if running_mean is not None and running_var is not None:
            with torch.no_grad():
                running_mean.mul_(1.0 - momentum).add_(mean, alpha=momentum)
                running_var.mul_(1.0 - momentum).add_(var * (m / (m - 1)), alpha=momentum)
        return y
    if running_mean is None or running_var is None:
        raise ValueError("eval-mode batch normalization needs running_mean and running_var")
    inv_std = torch.rsqrt(running_var + eps)
    scale = inv_std if weight is None else inv_std * weight
    shift = -running_mean * scale if bias is None else bias - running_mean * scale
    return torch.addcmul(_per_channel(shift, x), x, _per_channel(scale, x))


class BatchNorm(nn.Module):
    r"""Batch normalization over axis 1 of an ``(N, C)`` or ``(N, C, *spatial)`` input.

    $y = \gamma \hat{x} + \beta$. In training mode $\hat{x}$ uses the batch mean and the
    biased batch variance, and the running statistics move towards the batch's
    (``momentum`` weights the new batch; ``momentum=None`` keeps a cumulative average; the
    unbiased variance is stored). In eval mode $\hat{x}$ uses the running statistics.

    Parameters ``weight`` ($\gamma$, ones) and ``bias`` ($\beta$, zeros) exist when
    ``affine``; buffers ``running_mean`` (zeros), ``running_var`` (ones) and
    ``num_batches_tracked`` exist when ``track_running_stats``, otherwise they are ``None``
    and batch statistics are used in eval mode too, as in torch.
    """

    _version = 2

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(num_features, int) or num_features < 1:
            raise ValueError(f"num_features must be a positive integer; got {num_features!r}")
        if not float(eps) >= 0.0:
            raise ValueError(f"eps must be a non-negative number; got {eps}")
        if momentum is not None and not 0.0 <= float(momentum) <= 1.0:
            raise ValueError(
                f"momentum weights the new batch (PyTorch's convention) and must lie in "
                f"[0, 1], or be None for a cumulative average; got {momentum}"
            )
        factory = {"device": device, "dtype": dtype}
        self.num_features = num_features
        self.eps = float(eps)
        self.momentum = momentum
        self.affine = affine
        self.track_running_stats = track_running_stats
        if affine:
            self.weight = nn.Parameter(torch.ones(num_features, **factory))
            self.bias = nn.Parameter(torch.zeros(num_features, **factory))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if track_running_stats:
            self.register_buffer("running_mean", torch.zeros(num_features, **factory))
            self.register_buffer("running_var", torch.ones(num_features, **factory))
            self.register_buffer(
                "num_batches_tracked", torch.tensor(0, dtype=torch.long, device=device)
            )
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)

    def reset_running_stats(self) -> None:
        """Running mean 0, running variance 1, no batches tracked."""
        if self.track_running_stats:
            self.running_mean.zero_()
            self.running_var.fill_(1.0)
            self.num_batches_tracked.zero_()

    def reset_parameters(self) -> None:
        """gamma = 1, beta = 0, and fresh running statistics."""
        self.reset_running_stats()
        if self.affine:
            nn.init.ones_(self.weight)
            nn.init.zeros_(self.bias)

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
            f"affine={self.affine}, track_running_stats={self.track_running_stats}"
        )

    def forward(self, x: Tensor) -> Tensor:
        _check_input(x)
        _check_channels(x, self.num_features)
        use_batch_stats = self.training or self.running_mean is None
        factor = 0.0 if self.momentum is None else float(self.momentum)
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                factor = 1.0 / float(self.num_batches_tracked)
        track = not use_batch_stats or self.track_running_stats
        return batch_norm(
            x,
            self.running_mean if track else None,
            self.running_var if track else None,
            self.weight,
            self.bias,
            training=use_batch_stats,
            momentum=factor,
            eps=self.eps,
        )

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, *args):
        # State dicts saved before num_batches_tracked existed (torch's version 1) lack it.
        version = local_metadata.get("version", None)
        key = prefix + "num_batches_tracked"
        if (version is None or version < 2) and self.track_running_stats and key not in state_dict:
            state_dict[key] = torch.tensor(0, dtype=torch.long)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, *args)
