"""BN after training: the eval-mode layer as an affine map, folding it away, re-estimating it.

In eval mode a BN layer with running statistics $\\hat\\mu$, $\\hat\\sigma^2$ is, per channel,

$$
y = a\\,x + b, \\qquad a = \\frac{\\gamma}{\\sqrt{\\hat\\sigma^2 + \\epsilon}}, \\qquad
b = \\beta - a\\,\\hat\\mu .
$$

A linear or convolutional layer $z = W x + c$ followed by it is again such a layer, with
output channel $o$ scaled by $a_o$:

$$
W'_{o} = a_o\\,W_{o}, \\qquad c'_o = a_o\\,(c_o - \\hat\\mu_o) + \\beta_o
$$

(``fold_batch_norm``), whatever the convolution's groups, since BN scales output channels
only. A BN *before* a linear layer folds into its input side, $W' = W\\,\\mathrm{diag}(a)$,
$c' = c + W b$ (``fold_batch_norm_before``); for a convolution with zero padding the result is
not the same convolution, since after folding the zero border would act as $b$ (padding the
input beforehand with the value the BN maps to 0 would fold it). A BN as a whole does
not fold across a nonlinearity: a positive scale passes a ReLU
($a\\,\\mathrm{ReLU}(z) = \\mathrm{ReLU}(a z)$ for $a > 0$), a shift or a negative scale does not.

Every function takes torch's ``BatchNorm1d/2d/3d`` and ``bncourse.BatchNorm`` alike, refuses
a layer in training mode or without running statistics, and never modifies its arguments.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = [
    "eval_affine",
    "fold_batch_norm",
    "fold_batch_norm_before",
    "fold_model",
    "population_statistics",
    "reestimate_running_stats",
    "conv_bn_with_offset",
    "float32_fold_error",
    "train_digits_model",
    "train_eval_gap",
    "variance_scale_accuracy",
    "GapResult",
    "remove_warm_up",
    "replay_running_stats",
    "fold_benchmark",
]

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _is_batch_norm(module: nn.Module) -> bool:
    from .layer import BatchNorm

    return isinstance(module, (nn.modules.batchnorm._BatchNorm, BatchNorm))


def _check_bn(bn: nn.Module) -> None:
    if not _is_batch_norm(bn):
        raise ValueError(f"expected a BatchNorm layer (torch's or bncourse's), got "
                         f"{type(bn).__name__}")
    if bn.training:
        raise ValueError("the BatchNorm layer is in training mode, where it uses batch "
                         "statistics and is not an affine map: call .eval() first")
    if getattr(bn, "running_mean", None) is None or getattr(bn, "running_var", None) is None:
        raise ValueError("the BatchNorm layer has no running statistics "
                         "(track_running_stats=False): in eval mode it still uses batch "
                         "statistics, so it cannot be folded")


def eval_affine(bn: nn.Module) -> tuple[Tensor, Tensor]:
    """The per-channel ``(a, b)`` of an eval-mode BN layer: ``y = a x + b`` per channel.

    $a = \\gamma / \\sqrt{\\hat\\sigma^2 + \\epsilon}$, $b = \\beta - a\\hat\\mu$; without
    ``affine``, $\\gamma = 1$ and $\\beta = 0$. Computed in the buffers' dtype, detached.
    """
    a, mean, beta = _scale_mean_shift(bn)
    with torch.no_grad():
        return a, beta - a * mean


def _scale_mean_shift(bn: nn.Module) -> tuple[Tensor, Tensor, Tensor]:
    """``(a, running_mean, beta)`` of an eval-mode BN, detached copies in its buffers' dtype."""
    _check_bn(bn)
    with torch.no_grad():
        mean, var = bn.running_mean.detach(), bn.running_var.detach()
        gamma = bn.weight.detach() if bn.weight is not None else torch.ones_like(var)
        beta = bn.bias.detach() if getattr(bn, "bias", None) is not None else torch.zeros_like(mean)
        return gamma / torch.sqrt(var + bn.eps), mean.clone(), beta.clone()


def _out_features(layer: nn.Module) -> int:
    return layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels


def _check_layer(layer: nn.Module, role: str) -> None:
    if isinstance(layer, nn.modules.conv._ConvTransposeNd):
        raise ValueError(f"{type(layer).__name__} is not supported: only Linear and "
                         f"Conv1d/2d/3d layers can be folded ({role})")
    if not isinstance(layer, (nn.Linear, *_CONVS)):
        raise ValueError(f"cannot fold BatchNorm into a {type(layer).__name__}: only Linear "
                         f"and Conv1d/2d/3d layers are supported ({role})")


def _with_bias(layer: nn.Module) -> nn.Module:
    """A deep copy of ``layer`` that has a bias (zeros where the original had none)."""
    new = copy.deepcopy(layer)
    if new.bias is None:
        new.bias = nn.Parameter(torch.zeros(_out_features(new), dtype=new.weight.dtype,
                                            device=new.weight.device))
    return new


def fold_batch_norm(layer: nn.Module, bn: nn.Module) -> nn.Module:
    """A new layer equal to ``bn(layer(x))`` in eval mode: $W' = aW$, $c' = a(c-\\hat\\mu)+\\beta$.

    ``layer`` is a ``Linear`` or ``Conv1d/2d/3d`` (any groups, with or without bias);
    ``bn`` an eval-mode BN over its output channels. Neither argument is changed. Raises
    ``ValueError`` for a BN in training mode or without running statistics, a channel count
    that does not match, or an unsupported layer type.

    The bias is computed in the order of the formula, as torch's ``fuse_conv_bn_eval`` does:
    the difference $c - \\hat\\mu$ first, then the scale. When the layer's bias carries a
    large offset, $c$ and $\\hat\\mu$ are close, their difference is exact in floating point
    (Sterbenz's lemma), and the fold is as accurate in float32 as in float64. Scaling first,
    $a c + (\\beta - a\\hat\\mu)$, would round the two large products $a c$ and $a\\hat\\mu$
    separately and lose the digits their difference needs. Mixed dtypes are computed in the
    wider one and stored in the layer's.
    """
    _check_layer(layer, "the layer before the BN")
    _check_bn(bn)
    if bn.num_features != _out_features(layer):
        raise ValueError(f"the BatchNorm has {bn.num_features} channels but the "
                         f"{type(layer).__name__} has {_out_features(layer)} outputs")
    a, mean, beta = _scale_mean_shift(bn)
    new = _with_bias(layer)
    with torch.no_grad():
        a_w = a.reshape(-1, *([1] * (new.weight.dim() - 1)))
        new.weight.copy_((new.weight * a_w).to(new.weight.dtype))
        new.bias.copy_(((new.bias - mean) * a + beta).to(new.bias.dtype))
    return new


def fold_batch_norm_before(bn: nn.Module, layer: nn.Module) -> nn.Module:
    """A new layer equal to ``layer(bn(x))`` in eval mode: $W' = W\\mathrm{diag}(a)$, $c' = c + Wb$.

    ``layer`` is a ``Linear``, or a ``Conv1d/2d/3d`` without zero padding: after folding, a
    zero-padded border would act as $b$ where the original saw 0, so that is refused with a
    ``ValueError`` (the pair equals the folded layer run on an input padded beforehand with
    $\\hat\\mu - \\beta\\sqrt{\\hat\\sigma^2 + \\epsilon}/\\gamma$ per channel, the value the BN
    maps to 0, but not the same layer with its own zero padding). Replicate, reflect and
    circular padding copy values of the input, which commutes with a per-channel affine map,
    so those fold exactly.
    """
    _check_layer(layer, "the layer after the BN")
    _check_bn(bn)
    in_features = layer.in_features if isinstance(layer, nn.Linear) else layer.in_channels
    if bn.num_features != in_features:
        raise ValueError(f"the BatchNorm has {bn.num_features} channels but the "
                         f"{type(layer).__name__} takes {in_features} inputs")
    if (isinstance(layer, _CONVS) and layer.padding_mode == "zeros"
            and any(p != 0 for p in _padding(layer))):
        raise ValueError("a BN before a zero-padded convolution cannot be folded into the "
                         "same convolution: after folding, the padded border would act as the "
                         "BN's shift b where the original saw 0 (replicate, reflect and "
                         "circular padding fold exactly; so does padding the input before the "
                         "layer with the value mean - beta * sqrt(var + eps) / gamma per "
                         "channel, which the BN maps to 0, when no gamma is 0)")
    a, b = eval_affine(bn)
    new = _with_bias(layer)
    with torch.no_grad():
        w = layer.weight.detach()
        if isinstance(layer, nn.Linear):
            new.bias.add_(w @ b.to(w.dtype))
            new.weight.mul_(a.to(w.dtype))
        else:
            groups = layer.groups
            per_group_in = layer.in_channels // groups
            per_group_out = layer.out_channels // groups
            # input channel of weight[o, j]: (o // per_group_out) * per_group_in + j
            group_of_out = torch.arange(layer.out_channels, device=w.device) // per_group_out
            channel = group_of_out[:, None] * per_group_in + torch.arange(
                per_group_in, device=w.device)[None, :]
            shape = (layer.out_channels, per_group_in) + (1,) * (w.dim() - 2)
            a_in = a.to(w.dtype)[channel].reshape(shape)
            b_in = b.to(w.dtype)[channel].reshape(shape)
            new.bias.add_((w * b_in).flatten(1).sum(dim=1))
            new.weight.mul_(a_in)
    return new


def _padding(conv: nn.Module) -> tuple[int, ...]:
    if isinstance(conv.padding, str):
        return (0,) if conv.padding == "valid" else (1,)
    return tuple(conv.padding)


def fold_model(model: nn.Module, strict: bool = True) -> nn.Module:
    """A copy of ``model`` in eval mode with every BN that follows a Linear/Conv folded into it.

    Pairs are found among consecutive children of every ``nn.Sequential`` (at any depth);
    a folded BN is replaced by ``nn.Identity``. With ``strict`` (the default) a BN left
    unfolded (after a nonlinearity, say, or outside a Sequential) raises ``ValueError``
    naming it; otherwise it is kept as it is. ``model`` itself is not changed.
    """
    new = copy.deepcopy(model).eval()
    folded: set[int] = set()
    for container in new.modules():
        if not isinstance(container, nn.Sequential):
            continue
        names = list(container._modules)
        for prev, name in zip(names, names[1:], strict=False):
            layer, bn = container._modules[prev], container._modules[name]
            if _is_batch_norm(bn) and isinstance(layer, (nn.Linear, *_CONVS)):
                container._modules[prev] = fold_batch_norm(layer, bn)
                container._modules[name] = nn.Identity()
                folded.add(id(bn))
    if strict:
        left = [f"'{name}' ({type(m).__name__})" for name, m in new.named_modules()
                if _is_batch_norm(m)]
        if left:
            raise ValueError(f"these BatchNorm layers do not directly follow a Linear or Conv "
                             f"layer in a Sequential and were not folded: {', '.join(left)} "
                             f"(pass strict=False to keep them)")
    return new


def population_statistics(
    model: nn.Module, batches: Iterable[Tensor]
) -> dict[str, tuple[Tensor, Tensor]]:
    """Ioffe and Szegedy's Algorithm 2 for every BN layer of ``model``, without changing it.

    For each BN layer (by name): $E[x] = \\frac{1}{K}\\sum_k \\mu_k$ and
    $\\mathrm{Var}[x] = \\frac{m}{m-1}\\,\\frac{1}{K}\\sum_k \\sigma_k^2$, from the batch
    statistics the layer sees in a training-mode pass over each batch (the earlier layers
    normalized with their own batch statistics, as in training). Batches of equal size
    ``m`` make this the formula of the paper. ``batches`` yields inputs (or ``(x, y)``).
    """
    from .freezing import batch_norm_layers

    work = copy.deepcopy(model).train()
    names = {id(m): n for n, m in work.named_modules()}
    sums: dict[str, list] = {}

    def hook(module: nn.Module, inputs: tuple[Tensor, ...], _output: Tensor) -> None:
        x = inputs[0].detach()
        dims = [0, *range(2, x.dim())]
        m = x.numel() // x.shape[1]
        if m < 2:
            raise ValueError("Algorithm 2 needs at least two values per channel in a batch")
        var, mean = torch.var_mean(x, dim=dims, correction=0)
        entry = sums.setdefault(names[id(module)], [0, 0.0, 0.0])
        entry[0] += 1
        entry[1] = entry[1] + mean
        entry[2] = entry[2] + var * m / (m - 1)

    handles = [layer.register_forward_hook(hook) for layer in batch_norm_layers(work)]
    try:
        seen = 0
        with torch.no_grad():
            for batch in batches:
                work(batch[0] if isinstance(batch, (tuple, list)) else batch)
                seen += 1
    finally:
        for handle in handles:
            handle.remove()
    if seen == 0:
        raise ValueError("population_statistics needs at least one batch")
    return {name: (s[1] / s[0], s[2] / s[0]) for name, s in sums.items()}


def reestimate_running_stats(model: nn.Module, batches: Iterable[Tensor]) -> nn.Module:
    """"Precise BN": every BN layer's running statistics recomputed as cumulative averages.

    The same as :func:`bncourse.freezing.reestimate_running_stats` (``momentum=None`` over
    ``batches``, every module's mode restored); for batches of equal size the result is
    :func:`population_statistics`. Changes ``model`` in place and returns it.
    """
    from .freezing import reestimate_running_stats as _reestimate

    with torch.no_grad():
        return _reestimate(model, batches)


# --------------------------------------------------------------------------------------
# The measurements of chapter 5
# --------------------------------------------------------------------------------------


def conv_bn_with_offset(
    offset: float = 0.0, log10_spread: float = 0.0, channels: int = 32, seed: int = 0,
    where: str = "bias",
) -> tuple[nn.Conv2d, nn.BatchNorm2d, Tensor]:
    """A float64 ``Conv2d -> BN`` pair in eval mode and its input, with offset pre-activations.

    The outputs of a ``Conv2d(16, channels, 3)`` (no padding) sit at ``offset``: added to
    its bias (``where="bias"``), or coming from inputs shifted by ``offset`` through filters
    scaled so that their sums are 1 (``where="input"``). The BN has the exact statistics of
    those outputs, $\\beta \\sim N(0, 1)$, and a per-channel scale ``a`` drawn log-uniformly
    from $[10^{-s}, 10^{s}]$, ``s = log10_spread``. Returns ``(conv, bn, x)``.
    """
    if where not in ("bias", "input"):
        raise ValueError(f"where must be 'bias' or 'input', got {where!r}")
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    conv = nn.Conv2d(16, channels, 3, dtype=torch.float64)
    x = torch.randn(8, 16, 8, 8, generator=g, dtype=torch.float64)
    bn = nn.BatchNorm2d(channels, dtype=torch.float64)
    with torch.no_grad():
        if where == "bias":
            conv.bias.add_(offset)
        else:
            # filters whose weights sum to 1, so that the offset passes through unchanged
            conv.weight.add_((1 - conv.weight.sum(dim=(1, 2, 3), keepdim=True)) / 144)
            x = x + offset
        z = conv(x)
        var, mean = torch.var_mean(z, dim=(0, 2, 3))
        a = 10 ** ((torch.rand(channels, generator=g, dtype=torch.float64) * 2 - 1)
                   * log10_spread)
        bn.running_mean.copy_(mean)
        bn.running_var.copy_(var)
        bn.weight.copy_(a * torch.sqrt(var + bn.eps))
        bn.bias.copy_(torch.randn(channels, generator=g, dtype=torch.float64))
    return conv, bn.eval(), x


def _fold_scaling_first(layer: nn.Module, bn: nn.Module) -> nn.Module:
    """The fold with the bias computed as $a c + (\\beta - a\\hat\\mu)$: the same formula, in
    an order that rounds $a c$ and $a\\hat\\mu$ separately (kept to show what the order does)."""
    a, b = eval_affine(bn)
    new = _with_bias(layer)
    with torch.no_grad():
        new.weight.mul_(a.reshape(-1, *([1] * (new.weight.dim() - 1))))
        new.bias.copy_(a * new.bias + b)
    return new


def float32_fold_error(
    offset: float = 0.0, log10_spread: float = 0.0, channels: int = 32, seed: int = 0,
    where: str = "bias",
) -> dict[str, float]:
    """The float32 error of the pair of :func:`conv_bn_with_offset`, folded and unfolded.

    Every model is built from the float32 parameters and run in float32; the reference is
    the float64 evaluation of the same float32 parameters and input. The error of a model is
    the largest over channels of ``max|y - y_ref| / max|y_ref|`` within the channel. Returns
    a dict with the errors of ``"unfolded"`` (the conv, then the BN), ``"folded"``
    (:func:`fold_batch_norm`, $a(c - \\hat\\mu) + \\beta$), ``"torch"`` (torch's
    ``fuse_conv_bn_eval``) and ``"scaled first"`` ($a c + (\\beta - a\\hat\\mu)$, each fold
    computed in float32), and ``"offset"``, the median over channels of
    $|\\mathrm{mean}| / \\mathrm{std}$ of the convolution's outputs.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    conv, bn, x = conv_bn_with_offset(offset, log10_spread, channels, seed, where)
    conv32, bn32, x32 = copy.deepcopy(conv).float().eval(), copy.deepcopy(bn).float(), x.float()
    models = {
        "unfolded": nn.Sequential(conv32, bn32),
        "folded": fold_batch_norm(conv32, bn32),
        "torch": fuse_conv_bn_eval(conv32, bn32),
        "scaled first": _fold_scaling_first(conv32, bn32),
    }
    with torch.no_grad():
        ref = copy.deepcopy(models["unfolded"]).double()(x32.double())
        scale = ref.abs().amax(dim=(0, 2, 3))
        errors = {name: float(((model(x32).double() - ref).abs().amax(dim=(0, 2, 3))
                               / scale).max())
                  for name, model in models.items()}
        var, mean = torch.var_mean(conv(x), dim=(0, 2, 3))
    errors["offset"] = float((mean.abs() / var.sqrt()).median())
    return errors


@dataclass
class GapResult:
    """Accuracies (in %) of one trained digits model evaluated several ways, and its lag."""

    train_mode: float  # batch statistics of test batches of the training batch size
    running: float  # eval mode, the running statistics left by training
    running_warmed: float  # the same with the moving average's start values divided out
    precise: float  # eval mode, after re-estimating the statistics on training batches
    precise_biased: float  # the same with the biased (divide-by-m) variance stored, as Keras 3 does
    lag_mean: float  # mean over channels of |running mean - population mean| / population std
    lag_max: float  # the largest such distance over the channels of every BN layer
    noise_mean: float  # lag_mean of the same moving average replayed with the final weights


def remove_warm_up(layer: nn.Module) -> None:
    """Divide the start values out of a BN layer's running statistics, in place.

    After $k$ updates with momentum $\alpha$ from the start values 0 and 1, the running
    mean carries weight $(1-\alpha)^k$ on 0 and the running variance on 1; the remaining
    weights sum to $1 - (1-\alpha)^k$. This returns the weighted average of the batch
    statistics alone (as Adam's bias correction does for its moments). Refuses a layer
    with ``momentum=None`` (a cumulative average has no start values left).
    """
    if layer.momentum is None:
        raise ValueError("a cumulative average (momentum=None) has no start values to remove")
    k = int(layer.num_batches_tracked)
    if k == 0:
        raise ValueError("the layer has seen no batch, so its statistics are the start values")
    left = (1 - layer.momentum) ** k
    with torch.no_grad():
        layer.running_mean.div_(1 - left)
        layer.running_var.sub_(left).div_(1 - left)


def replay_running_stats(model: nn.Module, data=None, batch_size: int = 32,
                         seed: int = 0) -> nn.Module:
    """A copy of ``model`` whose running statistics are the moving average of training,
    recomputed with the final weights, with its start values divided out.

    Every BN layer is reset and updated, with its own momentum, over as many shuffled
    training batches as it has seen (``num_batches_tracked``), the network in training mode
    as during training; then :func:`remove_warm_up`. What is left is the moving average's
    sampling noise alone: the weights did not move while it averaged, and no start value
    remains. ``model`` is not changed.
    """
    from .freezing import batch_norm_layers
    from .training import load_digits_data, minibatches, torch_threads

    data = data if data is not None else load_digits_data()
    work = copy.deepcopy(model)
    layers = batch_norm_layers(work)
    steps = int(layers[0].num_batches_tracked)
    for layer in layers:
        layer.reset_running_stats()
    generator = torch.Generator().manual_seed(seed)
    work.train()
    done = 0
    with torch_threads(1), torch.no_grad():
        while done < steps:
            for xb, _ in minibatches(data.x_train, data.y_train, batch_size, generator):
                if done == steps:
                    break
                work(xb)
                done += 1
        for layer in layers:
            if layer.momentum is not None:
                remove_warm_up(layer)
    return work.train(model.training)


def train_digits_model(
    momentum: float | None, lr: float, epochs: int, seed: int = 0, batch_size: int = 32,
    decay: bool = False, data=None,
) -> nn.Sequential:
    """An MLP ``64 -> 128 -> 128 -> 10`` with BN, trained on the digits with SGD (momentum 0.9).

    ``momentum`` is BN's; the learning rate ``lr`` is constant, or decays linearly to 0
    over training (``decay``). One thread, seeded: the same arguments give the same model.
    """
    from .training import load_digits_data, make_mlp, minibatches, torch_threads

    data = data if data is not None else load_digits_data()
    with torch_threads(1):
        model = make_mlp((128, 128), seed=seed, bias_before_bn=False)
        for m in model.modules():
            if _is_batch_norm(m):
                m.momentum = momentum
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
        gen = torch.Generator().manual_seed(seed)
        steps = epochs * (data.x_train.shape[0] // batch_size + 1)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: max(0.0, 1 - s / steps) if decay else 1.0)
        loss_fn = nn.CrossEntropyLoss()
        model.train()
        for _ in range(epochs):
            for xb, yb in minibatches(data.x_train, data.y_train, batch_size, gen):
                opt.zero_grad()
                loss_fn(model(xb), yb).backward()
                opt.step()
                sched.step()
    return model


def train_eval_gap(model: nn.Sequential, data=None, batch_size: int = 32,
                   n_batches: int | None = None, seed: int = 99) -> GapResult:
    """The accuracies and lag of :class:`GapResult` for a trained ``model`` (left unchanged).

    Precise BN uses ``n_batches`` shuffled training batches of ``batch_size`` (all of one
    epoch when None, the last one dropped when it is smaller, so that every batch has the
    same size ``m`` and Algorithm 2 applies as written). The lag is measured against those
    population statistics, for the running statistics left by training (``lag_mean``,
    ``lag_max``) and for :func:`replay_running_stats` (``noise_mean``).
    """
    from .freezing import batch_norm_layers
    from .training import accuracy, load_digits_data, minibatches, torch_threads

    data = data if data is not None else load_digits_data()
    with torch_threads(1), torch.no_grad():
        work = copy.deepcopy(model).train()
        correct = 0
        for start in range(0, data.x_test.shape[0], batch_size):
            xb, yb = data.x_test[start:start + batch_size], data.y_test[start:start + batch_size]
            if xb.shape[0] > 1:
                correct += int((work(xb).argmax(1) == yb).sum())
        train_mode = 100 * correct / data.x_test.shape[0]
        running = 100 * accuracy(model, data.x_test, data.y_test)
        batches = [xb for xb, _ in minibatches(data.x_train, data.y_train, batch_size,
                                               torch.Generator().manual_seed(seed))
                   if xb.shape[0] == batch_size]
        batches = batches[:n_batches] if n_batches is not None else batches
        population = population_statistics(model, batches)
        precise_model = reestimate_running_stats(copy.deepcopy(model), batches)
        precise = 100 * accuracy(precise_model, data.x_test, data.y_test)
        m = batches[0].shape[0]
        for layer in batch_norm_layers(precise_model):
            layer.running_var.mul_((m - 1) / m)
        precise_biased = 100 * accuracy(precise_model, data.x_test, data.y_test)
        warmed = copy.deepcopy(model)
        for layer in batch_norm_layers(warmed):
            remove_warm_up(layer)
        running_warmed = 100 * accuracy(warmed, data.x_test, data.y_test)
        names = {id(module): name for name, module in model.named_modules()}

        def distances(source: nn.Module) -> Tensor:
            out = []
            for original, layer in zip(batch_norm_layers(model), batch_norm_layers(source),
                                       strict=True):
                mu, var = population[names[id(original)]]
                out.append(((layer.running_mean - mu).abs() / var.sqrt()).flatten())
            return torch.cat(out)

        lag = distances(model)
        noise = distances(replay_running_stats(model, data, batch_size, seed + 1))
    return GapResult(train_mode, running, running_warmed, precise, precise_biased,
                     float(lag.mean()), float(lag.max()), float(noise.mean()))


def variance_scale_accuracy(model: nn.Sequential, factors: Sequence[float], data=None,
                            batch_size: int = 32, seed: int = 99) -> list[float]:
    r"""Test accuracy (in %) of ``model`` in eval mode after re-estimating its statistics, with
    every stored variance multiplied by each of ``factors``.

    The statistics are re-estimated as :func:`train_eval_gap` does (the same batches for the
    same ``seed``), so factor 1 gives its ``precise`` and $(m-1)/m$ its ``precise_biased``. A
    factor below one makes the eval-mode activations larger by $1/\sqrt{\text{factor}}$
    (up to $\epsilon$). ``model`` is not changed.
    """
    from .freezing import batch_norm_layers
    from .training import accuracy, load_digits_data, minibatches, torch_threads

    data = data if data is not None else load_digits_data()
    with torch_threads(1), torch.no_grad():
        batches = [xb for xb, _ in minibatches(data.x_train, data.y_train, batch_size,
                                               torch.Generator().manual_seed(seed))
                   if xb.shape[0] == batch_size]
        work = reestimate_running_stats(copy.deepcopy(model), batches)
        layers = batch_norm_layers(work)
        unbiased = [layer.running_var.clone() for layer in layers]
        scores = []
        for factor in factors:
            for layer, var in zip(layers, unbiased, strict=True):
                layer.running_var.copy_(var * factor)
            scores.append(100 * accuracy(work, data.x_test, data.y_test))
    return scores


#: Repeats of ``python -m bncourse.inference bench`` unless told otherwise.
BENCH_REPEATS = 200


def fold_benchmark(repeats: int = BENCH_REPEATS, batch: int = 32, seed: int = 0) -> dict:
    """Eval-mode time of a small conv net, with BN and with BN folded (one thread, float32).

    The net is three ``Conv2d(3x3) -> BN -> ReLU`` blocks (16, 32, 64 channels) on
    ``batch`` 3x32x32 inputs, then a linear layer. Each repetition times both models once,
    in alternating order. The result holds the machine and the date, the one-, five- and
    fifteen-minute load averages before and after the run (other programs competing for the
    cores show there), the median time of each model, and the paired ratios
    ``t_folded / t_unfolded``: their median with a distribution-free 95% interval
    (:func:`bncourse.claims.paired_ratio`) and their quartiles.
    """
    import os
    import statistics
    import time

    from .bench import machine_info
    from .claims import paired_ratio
    from .training import torch_threads

    load_before = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    previous = 3
    for width in (16, 32, 64):
        layers += [nn.Conv2d(previous, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                   nn.ReLU()]
        previous = width
    model = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))
    x = torch.randn(batch, 3, 32, 32)
    with torch.no_grad():
        model.train()(x)
    model.eval()
    folded = fold_model(model)
    times: dict[str, list[float]] = {"unfolded": [], "folded": []}
    with torch_threads(1), torch.no_grad():
        machine = machine_info()
        for _ in range(3):
            model(x)
            folded(x)
        for i in range(repeats):
            order = [("unfolded", model), ("folded", folded)]
            for name, net in order if i % 2 == 0 else order[::-1]:
                start = time.perf_counter()
                net(x)
                times[name].append(time.perf_counter() - start)
        max_gap = float((folded(x) - model(x)).abs().max())
    load_after = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    ratios = [f / u for f, u in zip(times["folded"], times["unfolded"], strict=True)]
    ratio = paired_ratio(times["folded"], times["unfolded"],
                         what="folded against unfolded eval-mode time")
    quartiles = statistics.quantiles(ratios, n=4)
    return {
        "command": f"python -m bncourse.inference bench --repeats {repeats}",
        "machine": machine,
        "load_average": {"before": load_before, "after": load_after},
        "model": "3 x (Conv2d 3x3 -> BatchNorm2d -> ReLU), 16/32/64 channels, then Linear",
        "input": [batch, 3, 32, 32],
        "dtype": "float32",
        "threads": 1,
        "repeats": repeats,
        "unfolded_ms": 1e3 * statistics.median(times["unfolded"]),
        "folded_ms": 1e3 * statistics.median(times["folded"]),
        "ratio_folded_to_unfolded": {
            "median": ratio.median, "low": ratio.low, "high": ratio.high,
            "confidence": ratio.confidence, "q1": quartiles[0], "q3": quartiles[2],
        },
        "max_abs_output_difference": max_gap,
    }


def _main(argv: list[str] | None = None) -> None:
    import argparse
    import json
    from pathlib import Path

    parser = argparse.ArgumentParser(prog="python -m bncourse.inference")
    parser.add_argument("command", choices=["bench"])
    parser.add_argument("--repeats", type=int, default=BENCH_REPEATS)
    parser.add_argument("--out", default=str(Path("book") / "data" / "fold_bench.json"))
    args = parser.parse_args(argv)
    result = fold_benchmark(repeats=args.repeats)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    _main()
