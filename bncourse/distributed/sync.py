r"""SyncBatchNorm: batch norm over the union of the local batches of a process group.

What travels, per channel and training step (the derivation is chapter 6's):

* **forward**: each process's count, mean and $M_2$ (an ``all_gather``), merged with
  :func:`~bncourse.distributed.moments.merge_all`; the global mean and biased variance
  $M_2/n$ then normalize as in BN;
* **backward**: one ``all_reduce`` of the local sums of $dy$ and $dy\,\hat{x}$, the two
  global sums that the compact backward needs. The local sums are also the local gradients
  of $\beta$ and $\gamma$, which data parallelism adds up like every other parameter's.

:class:`SyncBatchNorm` is a drop-in for :class:`bncourse.BatchNorm` that does this on any
process group, including gloo on CPU, where ``torch.nn.SyncBatchNorm`` refuses to train.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from ..layer import (
    BatchNorm,
    _check_channels,
    _check_dtypes,
    _check_input,
    _compute_dtype,
    _no_autocast,
    _per_channel,
    batch_norm,
)
from .moments import local_moments, merge_all

__all__ = ["SyncBatchNormFunction", "SyncBatchNorm", "convert_sync_batchnorm"]


def _require_group(group: Any) -> None:
    if not (dist.is_available() and dist.is_initialized()):
        raise ValueError(
            "SyncBatchNorm in training mode needs an initialized process group: call "
            "torch.distributed.init_process_group (or run under bncourse.distributed.launch) "
            "first, or use bncourse.BatchNorm in a single process"
        )
    if group is not None and dist.get_rank(group) < 0:
        raise ValueError(
            f"SyncBatchNorm: this process (global rank {dist.get_rank()}) is not a member of "
            f"the layer's process_group; give each process a group that contains it"
        )


def _all_gather(tensor: Tensor, group: Any) -> list[Tensor]:
    """Every rank's ``tensor``, in rank order (``dist.all_gather``)."""
    out = [torch.empty_like(tensor) for _ in range(dist.get_world_size(group))]
    dist.all_gather(out, tensor, group=group)
    return out


def _all_reduce_sum(tensor: Tensor, group: Any) -> None:
    """``tensor`` summed over the ranks, in place (``dist.all_reduce``)."""
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=group)


class SyncBatchNormFunction(torch.autograd.Function):
    """Training-mode batch norm over the union of the local batches of a process group.

    ``forward(x, weight, bias, eps, group) -> (y, mean, var, count)``: ``mean`` and ``var``
    (biased) are the global batch statistics and ``count`` the global number of values per
    channel, as non-differentiable outputs. Collectives: one ``all_gather`` of two integers
    (channels and local count, to check the ranks agree), one ``all_gather`` of the local
    mean and M2 (2C values) in the forward; one ``all_reduce`` of the local sums of dy and
    dy * x_hat (2C values) in the backward. The returned gradients of ``weight`` and ``bias``
    are the local sums; data parallelism adds them up across processes. The backward is
    first-order only (a second derivative raises instead of coming out wrong).
    """

    @staticmethod
    def forward(ctx, x, weight, bias, eps, group):  # type: ignore[override]
        c = x.shape[1]
        # float16/bfloat16 inputs: statistics, x_hat and sums in float32, as in BatchNorm.
        compute = _compute_dtype(x.dtype)
        xc = x.to(compute)
        n_local, mean_local, m2_local = local_moments(xc)
        meta = torch.tensor([c, n_local], dtype=torch.int64)
        metas = _all_gather(meta, group)
        channels = [int(m[0]) for m in metas]
        counts = [int(m[1]) for m in metas]
        if len(set(channels)) > 1:
            listing = ", ".join(f"rank {r}: {k}" for r, k in enumerate(channels))
            raise ValueError(
                f"SyncBatchNorm: the processes disagree on the number of channels ({listing}); "
                f"every process must feed the layer inputs with the same C"
            )
        n = sum(counts)
        if n < 2:
            raise ValueError(
                f"SyncBatchNorm: the global batch holds {n} value(s) per channel (local counts "
                f"{counts}); training-mode batch normalization needs at least 2"
            )
        stats = torch.stack([mean_local, m2_local])
        gathered = _all_gather(stats, group)
        _, mean, m2 = merge_all([(k, g[0], g[1]) for k, g in zip(counts, gathered, strict=True)])
        var = m2 / n
        inv_std = torch.rsqrt(var + eps)
        x_hat = xc - _per_channel(mean, xc)
        x_hat.mul_(_per_channel(inv_std, xc))
        # y = x_hat * gamma + beta in one pass where both are present (no extra temporaries).
        if weight is not None and bias is not None:
            y = torch.addcmul(_per_channel(bias.to(compute), xc), x_hat,
                              _per_channel(weight.to(compute), xc))
        elif weight is not None:
            y = x_hat * _per_channel(weight.to(compute), xc)
        elif bias is not None:
            y = x_hat + _per_channel(bias.to(compute), xc)
        else:
            y = x_hat.clone()
        ctx.save_for_backward(x_hat, inv_std, weight)
        ctx.n = n
        ctx.group = group
        ctx.x_dtype = x.dtype
        count = torch.tensor(n, dtype=torch.int64)
        ctx.mark_non_differentiable(mean, var, count)
        return y.to(x.dtype), mean, var, count

    @staticmethod
    @once_differentiable
    def backward(ctx, dy, _dmean, _dvar, _dcount):  # type: ignore[override]
        x_hat, inv_std, weight = ctx.saved_tensors
        dy = dy.to(x_hat.dtype)
        dims = [0, *range(2, x_hat.dim())]
        dbeta = dy.sum(dim=dims)
        dgamma = (dy * x_hat).sum(dim=dims)
        sums = torch.stack([dbeta, dgamma])
        _all_reduce_sum(sums, ctx.group)
        scale = inv_std if weight is None else inv_std * weight.to(inv_std.dtype)
        k = scale / ctx.n
        # dx = scale * dy - k * sum(dy) - x_hat * k * sum(dy x_hat), in two passes.
        dx = torch.addcmul(_per_channel(-k * sums[0], dy), dy, _per_channel(scale, dy))
        dx.addcmul_(x_hat, _per_channel(-k * sums[1], dy))
        param_dtype = weight.dtype if weight is not None else x_hat.dtype
        return (
            dx.to(ctx.x_dtype) if ctx.needs_input_grad[0] else None,
            dgamma.to(param_dtype) if ctx.needs_input_grad[1] else None,
            dbeta.to(param_dtype) if ctx.needs_input_grad[2] else None,
            None,
            None,
        )


class SyncBatchNorm(BatchNorm):
    """:class:`bncourse.BatchNorm` whose training-mode statistics are those of the global batch.

    The global batch is the union of the local batches of ``process_group`` (``None``: the
    default group). Same parameters, buffers and state_dict as :class:`bncourse.BatchNorm`;
    the running variance stores the global unbiased variance ``M2 / (n - 1)``. A process
    may hold an empty local batch as long as the global batch has 2 values per channel. In
    eval mode nothing is communicated: the running statistics normalize, as in BN, and a
    layer without running statistics (``track_running_stats=False``) normalizes with this
    process's own batch statistics, as ``torch.nn.SyncBatchNorm`` does.

    Every rank of the group must call the layer with the same number of channels. A rank
    whose input disagrees with its *own* layer's ``num_features`` raises at once, before
    any collective, and its peers then wait in the first collective until the group's
    timeout; ranks whose layers disagree with each other fail together with a clear error.
    float16/bfloat16 inputs are normalized with float32 statistics and returned in their own
    dtype; parameters and buffers follow torch's dtype rule (the input's dtype, or float32
    under a reduced-precision input).
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True,
                 process_group: Any = None, device: Any = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats,
                         device=device, dtype=dtype)
        self.process_group = process_group

    def forward(self, x: Tensor) -> Tensor:
        _check_input(x)
        _check_channels(x, self.num_features)
        _check_dtypes(x, weight=self.weight, bias=self.bias, running_mean=self.running_mean,
                      running_var=self.running_var)
        if not self.training:
            # Eval mode never communicates: the running statistics normalize, or, for a layer
            # without them (track_running_stats=False), this process's own batch statistics,
            # as torch.nn.SyncBatchNorm does.
            if self.running_mean is None:
                return batch_norm(x, None, None, self.weight, self.bias, training=True,
                                  eps=self.eps)
            return batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                              training=False, eps=self.eps)
        _require_group(self.process_group)
        with _no_autocast(x):
            y, mean, var, count = SyncBatchNormFunction.apply(
                x, self.weight, self.bias, self.eps, self.process_group)
        if self.track_running_stats:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                factor = 1.0 / float(self.num_batches_tracked)
            else:
                factor = float(self.momentum)
            n = int(count)
            with torch.no_grad():
                rm, rv = self.running_mean, self.running_var
                rm.mul_(1.0 - factor).add_(mean.to(rm.dtype), alpha=factor)
                rv.mul_(1.0 - factor).add_((var * (n / (n - 1))).to(rv.dtype), alpha=factor)
        return y


def convert_sync_batchnorm(module: nn.Module, process_group: Any = None) -> nn.Module:
    """Replace every :class:`bncourse.BatchNorm` and ``torch.nn.BatchNorm*d`` in ``module``.

    Each becomes a :class:`SyncBatchNorm` with the same settings and the very same parameter
    and buffer objects (same dtype, device and ``requires_grad``). Returns the converted
    module (the input itself when it has children, a new layer when ``module`` is a BN
    layer).
    """
    if isinstance(module, (BatchNorm, nn.modules.batchnorm._BatchNorm)) and not isinstance(
        module, SyncBatchNorm
    ):
        ref = module.weight if module.affine else module.running_mean
        kwargs = {} if ref is None else {"device": ref.device, "dtype": ref.dtype}
        new = SyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                            module.track_running_stats, process_group=process_group, **kwargs)
        # The same Parameter and buffer objects, not copies: no rounding through another
        # dtype, requires_grad kept (a frozen BN stays frozen), and an optimizer built before
        # the conversion still holds the model's parameters.
        if module.affine:
            new.weight = module.weight
            new.bias = module.bias
        if module.track_running_stats:
            new.running_mean = module.running_mean
            new.running_var = module.running_var
            new.num_batches_tracked = module.num_batches_tracked
        new.train(module.training)
        return new
    for name, child in module.named_children():
        setattr(module, name, convert_sync_batchnorm(child, process_group))
    return module
