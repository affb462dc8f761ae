"""The batch-normalization formulas in NumPy: the course's reference implementation.

Conventions, stated once here and used everywhere in the course:

* **Channel axis.** ``x`` has shape ``(N, C)`` or ``(N, C, *spatial)``; axis 1 is the channel
  axis. Each channel is normalized with statistics taken over every other axis, so a channel
  of a ``(N, C, H, W)`` input has ``m = N * H * W`` values.
* **Biased variance in the transform.** ``sigma_B^2 = mean((x - mu_B)^2)`` divides by ``m``.
  It is computed in two passes (centre first, then square), never as ``E[x^2] - E[x]^2``,
  which loses every significant digit when the mean is large compared with the spread.
* **eps inside the square root.** ``x_hat = (x - mu_B) / sqrt(sigma_B^2 + eps)``.
* **Running statistics, PyTorch convention.**
  ``new = (1 - momentum) * old + momentum * batch`` with ``momentum = 0.1`` by default, and
  the *unbiased* batch variance (divide by ``m - 1``) goes into ``running_var`` although the
  transform itself uses the biased one. Keras writes the same average as
  ``new = momentum * old + (1 - momentum) * batch`` with ``momentum = 0.99``;
  :func:`keras_to_torch_momentum` and :func:`torch_to_keras_momentum` convert.

NaN in the input gives NaN in the output of its channel; nothing is clipped or replaced.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "BNCache",
    "batch_norm_forward",
    "batch_norm_backward",
    "batch_norm_backward_staged",
    "batch_norm_inference",
    "update_running_stats",
    "torch_to_keras_momentum",
    "keras_to_torch_momentum",
    "reduction_axes",
    "channel_shape",
]


# --------------------------------------------------------------------------------------
# Shapes and validation
# --------------------------------------------------------------------------------------


def reduction_axes(ndim: int) -> tuple[int, ...]:
    """The axes BN averages over for an input of ``ndim`` dimensions: every axis but 1."""
    return (0, *range(2, ndim))


def channel_shape(ndim: int, num_channels: int) -> tuple[int, ...]:
    """Shape ``(1, C, 1, ..., 1)`` that broadcasts a per-channel vector against the input."""
    return (1, num_channels) + (1,) * (ndim - 2)


def _check_input(x: np.ndarray, name: str = "x") -> np.ndarray:
    x = np.asarray(x)
    if x.ndim < 2:
        raise ValueError(
            f"{name} must have at least 2 dimensions (N, C) or (N, C, *spatial); "
            f"got shape {x.shape}"
        )
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(
            f"{name} must have a floating dtype (float32 or float64); got {x.dtype}. "
            f"Convert it first, e.g. {name}.astype(np.float64)"
        )
    if x.dtype not in (np.float32, np.float64):
        raise ValueError(
            f"{name} must be float32 or float64; got {x.dtype}. The reference computes in the "
            f"input's dtype, and in float16 (largest value 65504) the squared deviations "
            f"overflow once |x - mean| > 256. Convert it first, e.g. {name}.astype(np.float32)"
        )
    return x


def _check_channel_vector(v: np.ndarray | None, num_channels: int, name: str) -> np.ndarray | None:
    if v is None:
        raise ValueError(
            f"{name} must be an array of shape (C,) = ({num_channels},), one value per "
            f"channel; got None (for no scale use np.ones(C), for no shift np.zeros(C))"
        )
    v = np.asarray(v)
    if v.shape != (num_channels,):
        raise ValueError(
            f"{name} must have shape (C,) = ({num_channels},), one value per channel; "
            f"got shape {v.shape}"
        )
    if not np.issubdtype(v.dtype, np.floating):
        raise ValueError(f"{name} must have a floating dtype; got {v.dtype}")
    return v


def _values_per_channel(x: np.ndarray) -> int:
    return x.size // x.shape[1] if x.shape[1] else 0


def _check_batch(x: np.ndarray) -> int:
    m = _values_per_channel(x)
    if m < 2:
        raise ValueError(
            f"batch normalization in training mode needs more than 1 value per channel; "
            f"input of shape {x.shape} has m = {m}. With one value the batch variance is 0 "
            f"and every output would equal beta: use a larger batch, or inference mode"
        )
    return m


# --------------------------------------------------------------------------------------
# Forward and backward
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BNCache:
    """What the training-mode forward pass keeps for the backward pass.

    ``x_hat`` is the only activation-sized array; ``inv_std = 1 / sqrt(sigma_B^2 + eps)``,
    ``mean``, ``var`` and ``gamma`` are per-channel vectors of shape ``(C,)``.
    """

    x_hat: np.ndarray
    mean: np.ndarray
    var: np.ndarray
    inv_std: np.ndarray
    gamma: np.ndarray
    eps: float

    @property
    def m(self) -> int:
        """Number of values each channel's statistics were taken over."""
        return _values_per_channel(self.x_hat)


def batch_norm_forward(
    x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float = 1e-5
) -> tuple[np.ndarray, BNCache]:
    r"""Training-mode batch normalization: $y = \gamma \hat{x} + \beta$ with batch statistics.

    $\mu_B = \frac{1}{m}\sum_i x_i$, $\sigma_B^2 = \frac{1}{m}\sum_i (x_i - \mu_B)^2$ (biased,
    centred two-pass), $\hat{x}_i = (x_i - \mu_B)/\sqrt{\sigma_B^2 + \epsilon}$, per channel
    over every axis except axis 1.

    Args:
        x: input of shape ``(N, C)`` or ``(N, C, *spatial)``, floating dtype.
        gamma, beta: per-channel scale and shift, shape ``(C,)``.
        eps: added to the variance inside the square root; must be >= 0.

    Returns:
        ``(y, cache)``: ``y`` has the shape and dtype of ``x``; ``cache`` feeds
        :func:`batch_norm_backward`.

    Raises:
        ValueError: fewer than 2 dimensions, a non-floating dtype, ``gamma``/``beta`` not of
            shape ``(C,)``, a negative ``eps``, or one value per channel.
    """
    x = _check_input(x)
    num_channels = x.shape[1]
    gamma = _check_channel_vector(gamma, num_channels, "gamma")
    beta = _check_channel_vector(beta, num_channels, "beta")
    eps = _check_eps(eps)
    _check_batch(x)

    axes = reduction_axes(x.ndim)
    shape = channel_shape(x.ndim, num_channels)
    mean = x.mean(axis=axes)
    centred = x - mean.reshape(shape)
    var = np.mean(centred * centred, axis=axes)
    inv_std = 1.0 / np.sqrt(var + eps)
    x_hat = centred * inv_std.reshape(shape)
    y = gamma.reshape(shape) * x_hat + beta.reshape(shape)
    cache = BNCache(x_hat=x_hat, mean=mean, var=var, inv_std=inv_std, gamma=gamma, eps=eps)
    return y.astype(x.dtype, copy=False), cache


def batch_norm_backward(
    dy: np.ndarray, cache: BNCache
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r"""Gradients of the training-mode transform, in the compact closed form.

    $\partial L/\partial\gamma = \sum_i dy_i \hat{x}_i$, $\partial L/\partial\beta = \sum_i dy_i$,
    $dx = \frac{\gamma}{m\sqrt{\sigma_B^2+\epsilon}}\big(m\,dy - \sum_j dy_j
    - \hat{x}\sum_j dy_j \hat{x}_j\big)$, sums per channel over the reduced axes.

    Args:
        dy: upstream gradient, the shape of ``y``.
        cache: the second value returned by :func:`batch_norm_forward`.

    Returns:
        ``(dx, dgamma, dbeta)`` with shapes ``x.shape``, ``(C,)``, ``(C,)``; ``dx`` has the
        input's dtype (as ``y`` has in the forward), ``dgamma`` and ``dbeta`` the dtype of
        ``gamma``: each gradient the dtype of what it differentiates, as in torch.
    """
    dy = _check_dy(dy, cache.x_hat.shape)
    x_hat = cache.x_hat
    axes = reduction_axes(x_hat.ndim)
    shape = channel_shape(x_hat.ndim, x_hat.shape[1])
    m = cache.m
    dbeta = dy.sum(axis=axes)
    dgamma = (dy * x_hat).sum(axis=axes)
    scale = (cache.gamma * cache.inv_std / m).reshape(shape)
    dx = scale * (m * dy - dbeta.reshape(shape) - x_hat * dgamma.reshape(shape))
    return _as_dtypes(dx, dgamma, dbeta, x_hat.dtype, cache.gamma.dtype)


def batch_norm_backward_staged(
    dy: np.ndarray, x: np.ndarray, gamma: np.ndarray, eps: float = 1e-5
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r"""The same gradients, by walking the forward graph backwards one node at a time.

    Nodes: $\mu = \operatorname{mean}(x)$, $c = x - \mu$, $v = \operatorname{mean}(c^2)$,
    $s = 1/\sqrt{v + \epsilon}$, $\hat{x} = c\,s$, $y = \gamma\hat{x} + \beta$. Every
    intermediate is an array and every step is one application of the chain rule, so the
    result can be checked against :func:`batch_norm_backward` line by line. The dtypes of
    the results are those of :func:`batch_norm_backward`.
    """
    x = _check_input(x)
    num_channels = x.shape[1]
    gamma = _check_channel_vector(gamma, num_channels, "gamma")
    eps = _check_eps(eps)
    m = _check_batch(x)
    dy = _check_dy(dy, x.shape)
    axes = reduction_axes(x.ndim)
    shape = channel_shape(x.ndim, num_channels)
    g = gamma.reshape(shape)

    # Forward, keeping every node.
    mu = x.mean(axis=axes, keepdims=True)
    c = x - mu
    v = np.mean(c * c, axis=axes, keepdims=True)
    s = 1.0 / np.sqrt(v + eps)
    x_hat = c * s

    # Backward, node by node.
    dbeta = dy.sum(axis=axes)
    dgamma = (dy * x_hat).sum(axis=axes)
    dx_hat = dy * g
    dc = dx_hat * s  # through x_hat = c * s, the direct path
    ds = (dx_hat * c).sum(axis=axes, keepdims=True)  # through x_hat = c * s, the s path
    dv = ds * (-0.5) * (v + eps) ** -1.5  # s = (v + eps)^(-1/2)
    dc = dc + dv * 2.0 * c / m  # v = mean(c^2)
    dmu = -dc.sum(axis=axes, keepdims=True)  # c = x - mu
    dx = dc + dmu / m  # mu = mean(x)
    return _as_dtypes(dx, dgamma, dbeta, x.dtype, gamma.dtype)


def _as_dtypes(
    dx: np.ndarray, dgamma: np.ndarray, dbeta: np.ndarray, x_dtype, gamma_dtype
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``dx`` in the input's dtype, ``dgamma`` and ``dbeta`` in ``gamma``'s.

    NumPy promotes a float32 array times a float64 one (``gamma`` is float64 when it comes
    from ``np.ones``) to float64; the forward casts ``y`` back, and so does the backward.
    """
    return (dx.astype(x_dtype, copy=False), dgamma.astype(gamma_dtype, copy=False),
            dbeta.astype(gamma_dtype, copy=False))


def batch_norm_inference(
    x: np.ndarray,
    running_mean: np.ndarray,
    running_var: np.ndarray,
    gamma: np.ndarray,
    beta: np.ndarray,
    eps: float = 1e-5,
) -> np.ndarray:
    r"""Inference-mode batch normalization with stored statistics.

    $y = \gamma (x - \hat\mu)/\sqrt{\hat\sigma^2 + \epsilon} + \beta$, where $\hat\mu$ and
    $\hat\sigma^2$ are the running mean and running variance. Every example is transformed
    on its own: the output of one example does not depend on the rest of the batch, and a
    batch of one is fine.
    """
    x = _check_input(x)
    num_channels = x.shape[1]
    running_mean = _check_channel_vector(running_mean, num_channels, "running_mean")
    running_var = _check_channel_vector(running_var, num_channels, "running_var")
    gamma = _check_channel_vector(gamma, num_channels, "gamma")
    beta = _check_channel_vector(beta, num_channels, "beta")
    eps = _check_eps(eps)
    if np.any(running_var < 0):
        raise ValueError("running_var must be non-negative; a variance cannot be negative")
    shape = channel_shape(x.ndim, num_channels)
    scale = gamma / np.sqrt(running_var + eps)
    y = (x - running_mean.reshape(shape)) * scale.reshape(shape) + beta.reshape(shape)
    return y.astype(x.dtype, copy=False)


def update_running_stats(
    running_mean: np.ndarray,
    running_var: np.ndarray,
    x: np.ndarray,
    momentum: float | None = 0.1,
    num_batches_tracked: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    r"""One update of the running statistics, PyTorch's convention.

    $\hat\mu \leftarrow (1 - \text{momentum})\,\hat\mu + \text{momentum}\,\mu_B$ and
    $\hat\sigma^2 \leftarrow (1 - \text{momentum})\,\hat\sigma^2 + \text{momentum}\,
    \frac{m}{m-1}\sigma_B^2$: the *unbiased* batch variance is stored, although the
    transform normalizes with the biased one.

    ``momentum`` is the weight of the new batch, in ``[0, 1]`` (0 freezes the statistics,
    as in :class:`bncourse.BatchNorm` and torch). ``momentum=None`` is PyTorch's cumulative
    average: the update with ``momentum = 1 / k`` at the ``k``-th batch, where ``k`` is
    ``num_batches_tracked`` counted *with* this batch (the layer's counter after it has
    advanced), so that after ``k`` batches the running mean is the mean of the batch means.
    Keras' ``momentum`` is the weight of the *old* value: convert with
    :func:`keras_to_torch_momentum`.

    Returns new arrays; the inputs are not modified.
    """
    x = _check_input(x)
    num_channels = x.shape[1]
    running_mean = _check_channel_vector(running_mean, num_channels, "running_mean")
    running_var = _check_channel_vector(running_var, num_channels, "running_var")
    if momentum is None:
        if (isinstance(num_batches_tracked, bool) or not isinstance(num_batches_tracked, int)
                or num_batches_tracked < 1):
            raise ValueError(
                f"momentum=None is the cumulative average, which needs num_batches_tracked, "
                f"the number of batches seen including this one (an integer >= 1); got "
                f"{num_batches_tracked!r}"
            )
        momentum = 1.0 / num_batches_tracked
    elif isinstance(momentum, bool) or not isinstance(momentum, (int, float, np.floating)):
        raise ValueError(f"momentum must be a number in [0, 1] or None; got {momentum!r}")
    elif not (0.0 <= float(momentum) <= 1.0):
        raise ValueError(
            f"momentum is the weight of the new batch in PyTorch's convention and must lie "
            f"in [0, 1]; got {momentum}. (Keras' momentum 0.99 is PyTorch's 0.01.)"
        )
    momentum = float(momentum)
    m = _check_batch(x)
    axes = reduction_axes(x.ndim)
    mean = x.mean(axis=axes)
    centred = x - mean.reshape(channel_shape(x.ndim, num_channels))
    unbiased_var = np.sum(centred * centred, axis=axes) / (m - 1)
    new_mean = (1.0 - momentum) * running_mean + momentum * mean
    new_var = (1.0 - momentum) * running_var + momentum * unbiased_var
    return new_mean, new_var


def torch_to_keras_momentum(momentum: float) -> float:
    """PyTorch's momentum (weight of the new batch) as Keras' (weight of the old value).

    The same moving average is ``torch_momentum = 1 - keras_momentum``: PyTorch's default
    0.1 is Keras' 0.9, and Keras' default 0.99 is PyTorch's 0.01.
    """
    momentum = float(momentum)
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"a momentum must lie in [0, 1]; got {momentum}")
    return 1.0 - momentum


def keras_to_torch_momentum(momentum: float) -> float:
    """Keras' momentum (weight of the old value) as PyTorch's (weight of the new batch)."""
    return torch_to_keras_momentum(momentum)


def _check_dy(dy: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    dy = np.asarray(dy)
    if dy.shape != shape:
        raise ValueError(
            f"dy must have the shape of the forward output {shape}; got {dy.shape}. "
            f"A smaller dy would broadcast into wrong gradients"
        )
    if not np.issubdtype(dy.dtype, np.floating):
        dy = dy.astype(np.float64)
    return dy


def _check_eps(eps: float) -> float:
    eps = float(eps)
    if not eps >= 0.0:  # also rejects NaN
        raise ValueError(f"eps must be a non-negative number; got {eps}")
    return eps
