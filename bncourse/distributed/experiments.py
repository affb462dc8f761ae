"""The chapter's experiments on small batches: the batch of two, accuracy against batch size,
gradient accumulation and ghost batches.

All of them train or probe a small multilayer perceptron on the scikit-learn digits
(``Linear -> norm -> ReLU -> Linear``) in the data's dtype (float64, see
:data:`bncourse.training.DTYPE`), so that their results do not depend on the machine.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ..layer import BatchNorm, staged_batch_norm

__all__ = ["small_batch_layer", "examples_seen", "batch_size_sweep", "accumulation_gap",
           "ghost_vs_sub_batches"]


class _DetachedBatchNorm(BatchNorm):
    r"""BN whose batch statistics autograd treats as constants: the chapter's ablation.

    The forward pass and the running statistics are BN's; the gradient to the input is
    $\gamma\,dy/\sqrt{\sigma_B^2 + \epsilon}$, as if the batch mean and variance did not
    depend on it. At a batch of two the output is still $\pm\gamma + \beta$, but the full
    gradient reaches the layer below: the difference from BN isolates what BN's backward pass
    withholds.
    """

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return super().forward(x)
        with torch.no_grad():
            super().forward(x)  # BN's update of the running statistics, nothing else
        dims = [0, *range(2, x.dim())]
        mean = x.detach().mean(dim=dims, keepdim=True)
        var = x.detach().var(dim=dims, unbiased=False, keepdim=True)
        shape = [1, -1] + [1] * (x.dim() - 2)
        x_hat = (x - mean) * torch.rsqrt(var + self.eps)
        return x_hat * self.weight.view(shape) + self.bias.view(shape)


def _mlp(norm: str, widths: Sequence[int], seed: int, virtual: int | None = None,
         dtype: torch.dtype = torch.float64) -> nn.Sequential:
    """``Linear -> norm -> ReLU`` per width, then ``Linear`` to 10 classes, in ``dtype``.

    ``norm`` is ``"batch"``, ``"batch_detached"`` (BN with its statistics detached from the
    graph, an ablation), ``"ghost"``, ``"group"`` (8 groups), ``"layer"`` or ``"none"``. For
    one seed the linear layers start from the same weights whatever the normalization (none
    of the normalizations draws random numbers), so runs that differ only in ``norm`` are
    paired.
    """
    from ..normalization import GhostBatchNorm

    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    previous = 64
    for width in widths:
        layers.append(nn.Linear(previous, width))
        if norm == "batch":
            layers.append(BatchNorm(width))
        elif norm == "batch_detached":
            layers.append(_DetachedBatchNorm(width))
        elif norm == "ghost":
            if virtual is None:
                raise ValueError("a ghost batch norm needs its virtual batch size")
            layers.append(GhostBatchNorm(width, virtual))
        elif norm == "group":
            layers.append(nn.GroupNorm(8, width))
        elif norm == "layer":
            layers.append(nn.LayerNorm(width))
        elif norm != "none":
            raise ValueError(f"unknown normalization {norm!r}")
        layers.append(nn.ReLU())
        previous = width
    layers.append(nn.Linear(previous, 10))
    return nn.Sequential(*layers).to(dtype)


def small_batch_layer(m: int, eps: float = 1e-5, seed: int = 0,
                      width: int = 64) -> dict[str, Tensor]:
    r"""The first ``Linear -> BN`` of the sweep's network on a batch of ``m`` digits.

    The network of :func:`batch_size_sweep` at initialization (``seed``), the first ``m``
    training digits, BN with ``eps`` in training mode (``eps = 0`` through
    :func:`bncourse.layer.staged_batch_norm`), and a seeded upstream gradient ``dy``.
    Returns ``z`` (the pre-activations, ``(m, width)``), ``x_hat``, ``dy``, ``dz`` (the
    gradient to ``z`` through BN, by autograd) and ``dz_const`` (the gradient if the batch
    statistics were constants, $\gamma\,dy/\sqrt{\sigma_B^2+\epsilon}$), all float64.
    """
    from ..training import load_digits_data

    data = load_digits_data()
    model = _mlp("batch", (width,), seed, dtype=data.x_train.dtype)
    linear, bn = model[0], model[1]
    bn.eps = float(eps)
    with torch.no_grad():
        z = linear(data.x_train[:m])
    z = z.clone().requires_grad_(True)
    if eps > 0:
        y = bn(z)
    else:
        # The layer, like torch's, refuses eps = 0 with batch statistics; the staged formula
        # (the same transform, autograd through each op) takes it.
        y = staged_batch_norm(z, bn.weight, bn.bias, 0.0)
    g = torch.Generator().manual_seed(seed + 1)
    dy = torch.randn(y.shape, generator=g, dtype=y.dtype)
    (dz,) = torch.autograd.grad(y, z, dy)
    var = z.detach().var(dim=0, unbiased=False)
    x_hat = (y.detach() - bn.bias.detach()) / bn.weight.detach()
    dz_const = dy * bn.weight.detach() / torch.sqrt(var + eps)
    return {"z": z.detach(), "x_hat": x_hat, "dy": dy, "dz": dz, "dz_const": dz_const}


def examples_seen(n_train: int, batch_size: int, examples: int,
                  min_steps: int = 0) -> tuple[int, int]:
    """``(examples, steps)`` of one run of :func:`batch_size_sweep`: how much it trains.

    A run goes through shuffled epochs of ``n_train`` examples in batches of ``batch_size``
    (a last batch of one example is dropped, see :func:`bncourse.training.minibatches`) and
    stops after the first step at which it has seen at least ``examples`` examples and taken
    at least ``min_steps`` steps.
    """
    sizes = [min(batch_size, n_train - start) for start in range(0, n_train, batch_size)]
    sizes = [s for s in sizes if s > 1]
    seen = steps = 0
    while True:
        for s in sizes:
            seen += s
            steps += 1
            if seen >= examples and steps >= min_steps:
                return seen, steps


def batch_size_sweep(batch_sizes: Sequence[int], norms: Sequence[str] = ("batch", "group",
                     "layer"), seeds: Sequence[int] = (0, 1, 2), examples: int = 12_000,
                     lr: float = 1e-3, widths: Sequence[int] = (64,),
                     min_steps: int = 0) -> dict[str, np.ndarray]:
    """Test accuracy on the digits against batch size, per normalization and seed.

    Every run trains with Adam at a fixed learning rate until it has seen at least
    ``examples`` training examples (the default, 12,000, is about ten epochs of the 1,257
    training digits) and taken at least ``min_steps`` optimizer steps: a smaller batch takes
    more, smaller steps, and the largest batches, which reach ``examples`` in a handful of
    steps, see more examples instead (:func:`examples_seen` says how many). For one seed every
    normalization starts from the same linear weights and sees the batches in the same order,
    so the arms are paired by seed (``"batch_detached"``, BN whose statistics autograd treats
    as constants, pairs with ``"batch"`` the same way). Returns
    ``{norm: array (len(seeds), len(batch_sizes))}`` of test accuracies (eval mode: BN uses
    its running statistics).
    """
    from ..training import accuracy, load_digits_data, minibatches, torch_threads

    data = load_digits_data()
    n_train = data.x_train.shape[0]
    out = {}
    with torch_threads(1):
        for norm in norms:
            acc = np.zeros((len(seeds), len(batch_sizes)))
            for i, seed in enumerate(seeds):
                for j, m in enumerate(batch_sizes):
                    model = _mlp(norm, widths, seed, dtype=data.x_train.dtype)
                    opt = torch.optim.Adam(model.parameters(), lr=lr)
                    gen = torch.Generator().manual_seed(seed)
                    seen = steps = 0
                    while seen < examples or steps < min_steps:
                        for xb, yb in minibatches(data.x_train, data.y_train, m, gen):
                            loss = nn.functional.cross_entropy(model(xb), yb)
                            opt.zero_grad(set_to_none=True)
                            loss.backward()
                            opt.step()
                            seen += xb.shape[0]
                            steps += 1
                            if seen >= examples and steps >= min_steps:
                                break
                    if (seen, steps) != examples_seen(n_train, m, examples, min_steps):
                        raise RuntimeError("examples_seen no longer describes the sweep's runs")
                    acc[i, j] = accuracy(model, data.x_test, data.y_test)
            out[norm] = acc
    return out


def accumulation_gap(norm: str, micro: int = 8, n_micro: int = 4, seed: int = 0,
                     dtype: torch.dtype = torch.float64) -> dict[str, float]:
    """One batch of ``micro * n_micro`` digits against ``n_micro`` accumulated micro-batches.

    The same network (``Linear -> norm -> ReLU -> Linear``) and examples; the accumulated
    loss is each micro-batch's mean loss divided by ``n_micro``, so that without BN the two
    gradients would be equal. Returns the relative difference of the gradients (2-norm over
    every parameter) and, for BN, the largest difference of the running means; and, for BN,
    the same two numbers between accumulation and one step of ghost BN with virtual batches
    of ``micro`` on the whole batch (``ghost_grad_rel_diff``, ``ghost_running_mean_diff``).
    """
    from ..training import load_digits_data

    data = load_digits_data()
    x = data.x_train[: micro * n_micro].to(dtype)
    y = data.y_train[: micro * n_micro]

    def run(kind: str, accumulate: bool) -> tuple[Tensor, Tensor]:
        model = _mlp(kind, (32,), seed, virtual=micro, dtype=dtype)
        model.train()
        if accumulate:
            for xb, yb in zip(x.split(micro), y.split(micro), strict=True):
                (nn.functional.cross_entropy(model(xb), yb) / n_micro).backward()
        else:
            nn.functional.cross_entropy(model(x), y).backward()
        grad = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
        stats = [m.running_mean.clone() for m in model if hasattr(m, "running_mean")]
        return grad, stats[0] if stats else torch.zeros(1, dtype=dtype)

    (g_one, r_one), (g_acc, r_acc) = run(norm, False), run(norm, True)
    out = {"grad_rel_diff": float((g_one - g_acc).norm() / g_one.norm()),
           "running_mean_diff": float((r_one - r_acc).abs().max())}
    if norm == "batch":
        g_ghost, r_ghost = run("ghost", False)
        out["ghost_grad_rel_diff"] = float((g_ghost - g_acc).norm() / g_acc.norm())
        out["ghost_running_mean_diff"] = float((r_ghost - r_acc).abs().max())
    return out


def ghost_vs_sub_batches(n: int = 32, virtual: int = 8, c: int = 5,
                         seed: int = 0) -> dict[str, float]:
    """Ghost BN on a batch against :class:`bncourse.BatchNorm` on each sub-batch (float64).

    Returns the largest differences of the outputs and of the input and parameter gradients.
    """
    from ..normalization import ghost_batch_norm

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, generator=g, dtype=torch.float64) * 3 + 1
    dy = torch.randn(n, c, generator=g, dtype=torch.float64)
    w = torch.rand(c, generator=g, dtype=torch.float64) + 0.5
    b = torch.randn(c, generator=g, dtype=torch.float64)
    xg, wg, bg = (t.clone().requires_grad_(True) for t in (x, w, b))
    yg = ghost_batch_norm(xg, virtual, wg, bg)
    yg.backward(dy)
    ys, dxs, dws, dbs = [], [], [], []
    for xs, dys in zip(x.split(virtual), dy.split(virtual), strict=True):
        layer = BatchNorm(c, dtype=torch.float64)
        with torch.no_grad():
            layer.weight.copy_(w)
            layer.bias.copy_(b)
        xs = xs.clone().requires_grad_(True)
        y = layer(xs)
        y.backward(dys)
        ys.append(y.detach())
        dxs.append(xs.grad)
        dws.append(layer.weight.grad)
        dbs.append(layer.bias.grad)
    return {
        "y": float((yg.detach() - torch.cat(ys)).abs().max()),
        "dx": float((xg.grad - torch.cat(dxs)).abs().max()),
        "dgamma": float((wg.grad - sum(dws)).abs().max()),
        "dbeta": float((bg.grad - sum(dbs)).abs().max()),
        "full_batch_y": float((yg.detach() - BatchNorm(c, dtype=torch.float64)(x).detach()
                               .mul(w).add(b)).abs().max()),
    }
