r"""The normalization family as a choice of axes: batch, layer, instance and group norm.

Every member computes the same thing,

$$\hat{x} = \frac{x - \mathrm{mean}_A(x)}{\sqrt{\mathrm{var}_A(x) + \epsilon}},$$

with the mean and the *biased* variance taken over a set of axes $A$, and then applies a
learned scale and shift. Only $A$ (and the shape of the scale and shift) tells them apart:

* **batch norm**: $A$ = the batch axis and the spatial axes, one statistic per channel; it
  mixes the examples of a batch, so an example's output depends on its batch-mates
  {cite}`ioffe2015batch`.
* **layer norm**: $A$ = the trailing ``normalized_shape`` axes of each example; no batch
  axis, so every example is normalized on its own {cite}`ba2016layer`.
* **instance norm**: $A$ = the spatial axes, one statistic per example and channel.
* **group norm**: the channels of each example split into ``num_groups`` groups; $A$ = the
  channels of a group and the spatial axes {cite}`wu2018group`. One group is layer norm
  over ``(C, *spatial)``; ``C`` groups is instance norm.

:func:`normalize` is the common core; the named functions take the arguments of their
``torch.nn.functional`` counterparts (``layer_norm``, ``instance_norm``, ``group_norm``) and
agree with them in float64. They are plain tensor operations, so autograd differentiates
them. :func:`ghost_batch_norm` normalizes each virtual sub-batch of a large batch on its
own {cite}`hoffer2017train`. :func:`one_pass_variance` is the one-pass formula, which a
synchronized batch norm can all-reduce in one round at the price of digits lost to
cancellation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = [
    "normalize",
    "batch_norm_train",
    "layer_norm",
    "instance_norm",
    "group_norm",
    "ghost_batch_norm",
    "GhostBatchNorm",
    "one_pass_variance",
    "two_pass_variance",
    "depends_on_batch",
]


def _check_tensor(x: Tensor, min_dim: int, what: str) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{what}: the input must be a torch.Tensor; got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"{what}: the input must have a floating dtype; got {x.dtype}")
    if x.dim() < min_dim:
        raise ValueError(
            f"{what}: the input needs at least {min_dim} dimensions; got shape {tuple(x.shape)}"
        )


def _per_channel(v: Tensor, x: Tensor) -> Tensor:
    return v.view((1, -1) + (1,) * (x.dim() - 2))


def normalize(x: Tensor, axes: Sequence[int], eps: float = 1e-5) -> Tensor:
    r"""$\hat{x} = (x - \mathrm{mean}_A x)/\sqrt{\mathrm{var}_A x + \epsilon}$ over ``axes``.

    The variance is the biased one (divided by the number of values in $A$), computed in
    two passes (centre, then average the squares). Raises ``ValueError`` for an empty or
    repeated axis list, an axis out of range, or fewer than one value per statistic.
    """
    _check_tensor(x, 1, "normalize")
    axes = list(axes)
    if not axes:
        raise ValueError("normalize: axes must name at least one axis to take statistics over")
    resolved = []
    for a in axes:
        if not isinstance(a, int) or not -x.dim() <= a < x.dim():
            raise ValueError(
                f"normalize: axis {a!r} is out of range for an input of shape {tuple(x.shape)}"
            )
        resolved.append(a % x.dim())
    if len(set(resolved)) != len(resolved):
        raise ValueError(f"normalize: axes {axes} name the same axis twice")
    count = 1
    for a in resolved:
        count *= x.shape[a]
    if count < 1:
        raise ValueError(
            f"normalize: the axes {axes} of shape {tuple(x.shape)} hold no values to average"
        )
    mean = x.mean(dim=resolved, keepdim=True)
    centred = x - mean
    var = (centred * centred).mean(dim=resolved, keepdim=True)
    return centred * torch.rsqrt(var + eps)


def _affine(x_hat: Tensor, weight: Tensor | None, bias: Tensor | None, shape: tuple) -> Tensor:
    y = x_hat
    if weight is not None:
        y = y * weight.reshape(shape)
    if bias is not None:
        y = y + bias.reshape(shape)
    return y


def batch_norm_train(
    x: Tensor, weight: Tensor | None = None, bias: Tensor | None = None, eps: float = 1e-5
) -> Tensor:
    """Training-mode batch norm: statistics over axis 0 and the spatial axes, per channel."""
    _check_tensor(x, 2, "batch_norm_train")
    if x.numel() // x.shape[1] < 2:
        raise ValueError(
            f"batch_norm_train: training-mode batch norm needs at least 2 values per channel; "
            f"got shape {tuple(x.shape)}"
        )
    shape = (1, -1) + (1,) * (x.dim() - 2)
    return _affine(normalize(x, [0, *range(2, x.dim())], eps), weight, bias, shape)


def layer_norm(
    x: Tensor,
    normalized_shape: Sequence[int] | int,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
) -> Tensor:
    """Layer norm over the trailing ``normalized_shape`` axes; elementwise scale and shift.

    The arguments of ``torch.nn.functional.layer_norm``: ``weight`` and ``bias`` have shape
    ``normalized_shape``.
    """
    _check_tensor(x, 1, "layer_norm")
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    k = len(shape)
    if k == 0 or tuple(x.shape[x.dim() - k:]) != shape:
        raise ValueError(
            f"layer_norm: normalized_shape {shape} must be the trailing dimensions of the "
            f"input; got shape {tuple(x.shape)}"
        )
    return _affine(normalize(x, list(range(x.dim() - k, x.dim())), eps), weight, bias, shape)


def instance_norm(
    x: Tensor, weight: Tensor | None = None, bias: Tensor | None = None, eps: float = 1e-5
) -> Tensor:
    """Instance norm: statistics over the spatial axes of each example and channel.

    The training-mode arguments of ``torch.nn.functional.instance_norm`` without running
    statistics; ``weight`` and ``bias`` have one value per channel.
    """
    _check_tensor(x, 3, "instance_norm")
    shape = (1, -1) + (1,) * (x.dim() - 2)
    return _affine(normalize(x, list(range(2, x.dim())), eps), weight, bias, shape)


def group_norm(
    x: Tensor,
    num_groups: int,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
) -> Tensor:
    """Group norm: the channels of each example in ``num_groups`` groups, one statistic each.

    The arguments of ``torch.nn.functional.group_norm``; ``weight`` and ``bias`` have one
    value per channel. ``num_groups`` must divide the number of channels.
    """
    _check_tensor(x, 2, "group_norm")
    n, c = x.shape[0], x.shape[1]
    if not isinstance(num_groups, int) or num_groups < 1 or c % num_groups:
        raise ValueError(
            f"group_norm: num_groups must be a positive integer that divides the {c} "
            f"channels; got {num_groups!r}"
        )
    grouped = x.reshape(n, num_groups, c // num_groups, *x.shape[2:])
    x_hat = normalize(grouped, list(range(2, grouped.dim())), eps).reshape(x.shape)
    shape = (1, -1) + (1,) * (x.dim() - 2)
    return _affine(x_hat, weight, bias, shape)


def ghost_batch_norm(
    x: Tensor,
    virtual_batch_size: int,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
) -> Tensor:
    """Batch norm of each virtual sub-batch of ``virtual_batch_size`` examples on its own.

    The batch is cut into consecutive chunks (``torch.split``; the last one may be smaller)
    and each chunk is normalized with its own statistics, as batch norm on a batch of that
    size would. Every chunk must hold at least 2 values per channel.
    """
    _check_tensor(x, 2, "ghost_batch_norm")
    if not isinstance(virtual_batch_size, int) or virtual_batch_size < 1:
        raise ValueError(
            f"ghost_batch_norm: virtual_batch_size must be a positive integer; "
            f"got {virtual_batch_size!r}"
        )
    chunks = torch.split(x, virtual_batch_size, dim=0)
    return torch.cat([batch_norm_train(chunk, weight, bias, eps) for chunk in chunks], dim=0)


class GhostBatchNorm(nn.Module):
    """Ghost batch normalization as a layer: batch norm over virtual sub-batches.

    In training mode each chunk of ``virtual_batch_size`` examples is normalized with its
    own statistics (:func:`ghost_batch_norm`), and the running statistics move once per
    batch towards the mean, over the chunks, of the chunk means and of the chunk unbiased
    variances (``momentum`` weights the new value, as in PyTorch). In eval mode the running
    statistics normalize, exactly as in batch norm.
    """

    def __init__(
        self, num_features: int, virtual_batch_size: int, eps: float = 1e-5,
        momentum: float = 0.1,
    ) -> None:
        super().__init__()
        if not isinstance(virtual_batch_size, int) or virtual_batch_size < 1:
            raise ValueError(
                f"virtual_batch_size must be a positive integer; got {virtual_batch_size!r}"
            )
        self.num_features = num_features
        self.virtual_batch_size = virtual_batch_size
        self.eps = float(eps)
        self.momentum = float(momentum)
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def extra_repr(self) -> str:
        return f"{self.num_features}, virtual_batch_size={self.virtual_batch_size}"

    def forward(self, x: Tensor) -> Tensor:
        _check_tensor(x, 2, "GhostBatchNorm")
        if x.shape[1] != self.num_features:
            raise ValueError(
                f"GhostBatchNorm: input has {x.shape[1]} channels, the layer was built for "
                f"{self.num_features}"
            )
        if not self.training:
            inv_std = torch.rsqrt(self.running_var + self.eps)
            return (x - _per_channel(self.running_mean, x)) * _per_channel(
                inv_std * self.weight, x) + _per_channel(self.bias, x)
        y = ghost_batch_norm(x, self.virtual_batch_size, self.weight, self.bias, self.eps)
        with torch.no_grad():
            dims = [0, *range(2, x.dim())]
            chunks = torch.split(x.detach(), self.virtual_batch_size, dim=0)
            means = torch.stack([c.mean(dim=dims) for c in chunks])
            variances = torch.stack([c.var(dim=dims, unbiased=True) for c in chunks])
            self.running_mean.mul_(1 - self.momentum).add_(means.mean(0), alpha=self.momentum)
            self.running_var.mul_(1 - self.momentum).add_(variances.mean(0), alpha=self.momentum)
        return y


def one_pass_variance(x: Tensor, dim: int = 0) -> Tensor:
    r"""$\frac{1}{n}\sum x^2 - \left(\frac{1}{n}\sum x\right)^2$, in the dtype of ``x``.

    The textbook one-pass formula: two sums, each easy to all-reduce (Keras's synchronized
    batch norm does). It subtracts two nearly equal large numbers when the mean is large
    compared with the spread, and loses about ``2 log10(|mean| / std)`` digits to
    cancellation; :func:`two_pass_variance`, the pairwise merge of
    :func:`bncourse.distributed.merge_moments` and sums about a shift near the mean
    (:func:`bncourse.distributed.shifted_sums`) do not.
    """
    n = x.shape[dim]
    return (x * x).sum(dim=dim) / n - (x.sum(dim=dim) / n) ** 2


def two_pass_variance(x: Tensor, dim: int = 0) -> Tensor:
    """The biased variance computed by centring first, then averaging the squares."""
    centred = x - x.mean(dim=dim, keepdim=True)
    return (centred * centred).mean(dim=dim)


def depends_on_batch(name: str) -> bool:
    """Whether the training-mode output of an example depends on the other examples."""
    table = {"batch": True, "ghost batch": True, "layer": False, "instance": False,
             "group": False}
    if name not in table:
        raise ValueError(f"unknown normalization {name!r}; known: {sorted(table)}")
    return table[name]
