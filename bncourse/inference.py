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
$c' = c + W b$ (``fold_batch_norm_before``); for a convolution this is exact only without
zero padding, since after folding the zero border would act as $b$. A BN as a whole does
not fold across a nonlinearity: a positive scale passes a ReLU
($a\\,\\mathrm{ReLU}(z) = \\mathrm{ReLU}(a z)$ for $a > 0$), a shift or a negative scale does not.

Every function takes torch's ``BatchNorm1d/2d/3d`` and ``bncourse.BatchNorm`` alike, refuses
a layer in training mode or without running statistics, and never modifies its arguments.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
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
    "float32_fold_error",
    "train_digits_model",
    "train_eval_gap",
    "GapResult",
    "remove_warm_up",
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
    _check_bn(bn)
    with torch.no_grad():
        mean, var = bn.running_mean.detach(), bn.running_var.detach()
        gamma = bn.weight.detach() if bn.weight is not None else torch.ones_like(var)
        beta = bn.bias.detach() if getattr(bn, "bias", None) is not None else torch.zeros_like(mean)
        a = gamma / torch.sqrt(var + bn.eps)
        return a.clone(), (beta - a * mean).clone()


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
    """
    _check_layer(layer, "the layer before the BN")
    _check_bn(bn)
    if bn.num_features != _out_features(layer):
        raise ValueError(f"the BatchNorm has {bn.num_features} channels but the "
                         f"{type(layer).__name__} has {_out_features(layer)} outputs")
    a, b = eval_affine(bn)
    new = _with_bias(layer)
    with torch.no_grad():
        a_w = a.to(new.weight.dtype).reshape(-1, *([1] * (new.weight.dim() - 1)))
        new.weight.mul_(a_w)
        new.bias.copy_(a.to(new.bias.dtype) * new.bias + b.to(new.bias.dtype))
    return new


def fold_batch_norm_before(bn: nn.Module, layer: nn.Module) -> nn.Module:
    """A new layer equal to ``layer(bn(x))`` in eval mode: $W' = W\\mathrm{diag}(a)$, $c' = c + Wb$.

    ``layer`` is a ``Linear``, or a ``Conv1d/2d/3d`` without zero padding: after folding, a
    zero-padded border would act as $b$ where the original saw 0, so that is refused with a
    ``ValueError``. Replicate, reflect and circular padding copy values of the input, which
    commutes with a per-channel affine map, so those fold exactly.
    """
    _check_layer(layer, "the layer after the BN")
    _check_bn(bn)
    in_features = layer.in_features if isinstance(layer, nn.Linear) else layer.in_channels
    if bn.num_features != in_features:
        raise ValueError(f"the BatchNorm has {bn.num_features} channels but the "
                         f"{type(layer).__name__} takes {in_features} inputs")
    if (isinstance(layer, _CONVS) and layer.padding_mode == "zeros"
            and any(p != 0 for p in _padding(layer))):
        raise ValueError("a BN before a zero-padded convolution cannot be folded exactly: "
                         "after folding, the padded border would act as the BN's shift b "
                         "where the original saw 0 (replicate, reflect and circular padding "
                         "fold exactly)")
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


def float32_fold_error(
    offset: float = 0.0, log10_spread: float = 0.0, fold_in_float64: bool = False,
    channels: int = 32, seed: int = 0, where: str = "bias",
) -> tuple[float, float, float]:
    """The float32 error of a ``Conv2d -> BN`` pair, folded and unfolded, in eval mode.

    The outputs of a ``Conv2d(16, channels, 3)`` (no padding) sit at ``offset``: added to
    its bias (``where="bias"``), or coming from inputs shifted by ``offset`` through filters
    scaled so that their sums are 1 (``where="input"``). A BN follows, with the exact
    statistics of those outputs and a per-channel scale
    ``a`` drawn log-uniformly from $[10^{-s}, 10^{s}]$, ``s = log10_spread``. The reference
    is the float64 evaluation of the float32 parameters; the error of each float32 model is
    the largest over channels of ``max|y - y_ref| / max|y_ref|`` within the channel. The
    fold is computed in float32, or in float64 and then rounded (``fold_in_float64``).
    Returns ``(folded error, unfolded error, offset)``, the last being the median over
    channels of $|\\mathrm{mean}| / \\mathrm{std}$ of the convolution's outputs.
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
    bn.eval()
    conv32, bn32 = copy.deepcopy(conv).float(), copy.deepcopy(bn).float()
    x32 = x.float()
    with torch.no_grad():
        ref = copy.deepcopy(bn32).double()(copy.deepcopy(conv32).double()(x32.double()))
        if fold_in_float64:
            folded = fold_batch_norm(conv32.double(), bn32.double()).float()
            conv32, bn32 = conv32.float(), bn32.float()
        else:
            folded = fold_batch_norm(conv32, bn32)
        errors = []
        for y in (folded(x32), bn32(conv32(x32))):
            scale = ref.abs().amax(dim=(0, 2, 3))
            errors.append(float(((y.double() - ref).abs().amax(dim=(0, 2, 3)) / scale).max()))
    return errors[0], errors[1], float((mean.abs() / var.sqrt()).median())


@dataclass
class GapResult:
    """Accuracies (in %) of one trained digits model evaluated several ways, and its lag."""

    train_mode: float  # batch statistics of test batches of the training batch size
    running: float  # eval mode, the running statistics left by training
    running_warmed: float  # the same with the moving average's start values divided out
    precise: float  # eval mode, after re-estimating the statistics on training batches
    precise_biased: float  # the same with the biased (divide-by-m) variance stored, as Keras does
    lag_mean: float  # mean over channels of |running mean - population mean| / population std
    lag_max: float  # the largest such distance over the channels of every BN layer


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
    same size ``m`` and Algorithm 2 applies as written).
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
        distances = []
        for layer in batch_norm_layers(model):
            mu, var = population[names[id(layer)]]
            distances.append(((layer.running_mean - mu).abs() / var.sqrt()).flatten())
        lag = torch.cat(distances)
    return GapResult(train_mode, running, running_warmed, precise, precise_biased,
                     float(lag.mean()), float(lag.max()))


def fold_benchmark(repeats: int = 30, batch: int = 32, seed: int = 0) -> dict:
    """Eval-mode time of a small conv net, with BN and with BN folded (one thread, float32).

    The net is three ``Conv2d(3x3) -> BN -> ReLU`` blocks (16, 32, 64 channels) on
    ``batch`` 3x32x32 inputs, then a linear layer. Each repetition times both models once,
    in alternating order; the result holds the median of each and the median of the paired
    ratios ``t_folded / t_unfolded``.
    """
    import statistics
    import time

    from .training import torch_threads

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
    ratios = [f / u for f, u in zip(times["folded"], times["unfolded"], strict=True)]
    return {
        "model": "3 x (Conv2d 3x3 -> BatchNorm2d -> ReLU), 16/32/64 channels, then Linear",
        "input": [batch, 3, 32, 32],
        "dtype": "float32",
        "threads": 1,
        "repeats": repeats,
        "unfolded_ms": 1e3 * statistics.median(times["unfolded"]),
        "folded_ms": 1e3 * statistics.median(times["folded"]),
        "ratio_folded_to_unfolded": statistics.median(ratios),
        "max_abs_output_difference": max_gap,
        "torch": torch.__version__,
    }


def _main(argv: list[str] | None = None) -> None:
    import argparse
    import json
    import platform
    from pathlib import Path

    parser = argparse.ArgumentParser(prog="python -m bncourse.inference")
    parser.add_argument("command", choices=["bench"])
    parser.add_argument("--repeats", type=int, default=60)
    parser.add_argument("--out", default=str(Path("book") / "data" / "fold_bench.json"))
    args = parser.parse_args(argv)
    result = fold_benchmark(repeats=args.repeats)
    result["machine"] = f"{platform.machine()} {platform.processor() or ''}".strip()
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    _main()
