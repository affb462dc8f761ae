r"""Scale invariance of batch normalization, its gradients, and Jacobians of BN'd networks.

* $\mathrm{BN}((a w)^T x) = \mathrm{BN}(w^T x)$ for $a > 0$ when $\epsilon = 0$
  (:func:`projection_bn`, :func:`scale_deviation`, :func:`scale_deviation_theory`).
* $\nabla_x$ is unchanged by the scale of $w$ and $\nabla_{a w} L = \nabla_w L / a$
  (:func:`projection_gradients`).
* Plain SGD grows $\|w\|$; weight decay sets an equilibrium (:func:`train_scale_invariant`,
  :func:`equilibrium_angular_update`); with Adam the step angle scales as $\eta/\|w\|$.
* $J J^T$ of one BN'd layer under whitened inputs (:func:`whiten`, :func:`bn_layer_jacobian`),
  and gradients and input-output Jacobians of deep MLPs with and without BN, plain or
  residual, at initialization (:func:`gradient_norms_by_depth`, :func:`input_output_jacobian`).
* Why the gradient of a plain BN network grows with depth: the gain per layer
  $G = \sqrt{\mathbb E[\phi'(z)^2] / \operatorname{Var}\phi(z)}$, $z \sim \mathcal N(0, 1)$
  (:func:`layer_gain`), against the growth measured over a depth sweep
  (:func:`growth_per_layer`, :func:`log_linear_fit`), with the batch statistics in the backward
  pass or detached from it; for the residual network, the power of depth that the same
  reasoning gives (:func:`residual_ratio_mean_field`).

Every function is seeded and works in float64. Nothing here shows progress.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .functional import batch_norm_forward
from .layer import staged_batch_norm

__all__ = [
    "projection_bn",
    "scale_deviation",
    "scale_deviation_theory",
    "projection_gradients",
    "OPTIMIZERS",
    "TrainingRecord",
    "train_scale_invariant",
    "equilibrium_angular_update",
    "whiten",
    "bn_layer_jacobian",
    "INITS",
    "deep_mlp_weights",
    "ARCHITECTURES",
    "ACTIVATIONS",
    "deep_mlp_forward",
    "gradient_norms_by_depth",
    "input_output_jacobian",
    "layer_gain",
    "log_linear_fit",
    "growth_per_layer",
    "residual_ratio_mean_field",
]


# --------------------------------------------------------------------------------------
# Scale invariance of BN(w^T x)
# --------------------------------------------------------------------------------------


def projection_bn(x: np.ndarray, w: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    r"""$\hat z = \mathrm{BN}(X w)$ with $\gamma = 1, \beta = 0$.

    ``x`` is ``(N, d)``, ``w`` is ``(d,)``; returns ``(N,)``.
    """
    z = (np.asarray(x, dtype=np.float64) @ np.asarray(w, dtype=np.float64))[:, None]
    return batch_norm_forward(z, np.ones(1), np.zeros(1), eps)[0][:, 0]


def scale_deviation(
    x: np.ndarray, w: np.ndarray, scales: np.ndarray, eps: float = 1e-5
) -> np.ndarray:
    r"""$\max_i |\mathrm{BN}(X a w)_i - \mathrm{BN}(X w)_i|$ for each $a$ in ``scales``."""
    base = projection_bn(x, w, eps)
    return np.array([np.max(np.abs(projection_bn(x, a * w, eps) - base)) for a in scales])


def scale_deviation_theory(
    x: np.ndarray, w: np.ndarray, scales: np.ndarray, eps: float = 1e-5
) -> np.ndarray:
    r"""$\max_i|z_i - \mu| \cdot |a/\sqrt{a^2\sigma^2+\epsilon} - 1/\sqrt{\sigma^2+\epsilon}|$.

    The closed form of :func:`scale_deviation`, with $z = X w$, $\mu$ and $\sigma^2$ its
    batch mean and biased variance.
    """
    z = np.asarray(x, dtype=np.float64) @ np.asarray(w, dtype=np.float64)
    centred = z - z.mean()
    var = np.mean(centred**2)
    scales = np.asarray(scales, dtype=np.float64)
    factor = np.abs(scales / np.sqrt(scales**2 * var + eps) - 1.0 / np.sqrt(var + eps))
    return np.max(np.abs(centred)) * factor


def projection_gradients(
    x: np.ndarray, w: np.ndarray, upstream: np.ndarray, eps: float = 1e-5
) -> tuple[np.ndarray, np.ndarray]:
    r"""$(\nabla_X L, \nabla_w L)$ for $L = \sum_i u_i \mathrm{BN}(X w)_i$, by autograd in float64.

    Autograd runs through the staged formula (:func:`bncourse.layer.staged_batch_norm`),
    which accepts ``eps = 0``; torch's own ``batch_norm`` refuses ``eps = 0`` in training mode.
    """
    xt = torch.tensor(np.asarray(x), dtype=torch.float64, requires_grad=True)
    wt = torch.tensor(np.asarray(w), dtype=torch.float64, requires_grad=True)
    u = torch.tensor(np.asarray(upstream), dtype=torch.float64)
    z = (xt @ wt)[:, None]
    one = torch.ones(1, dtype=torch.float64)
    y = staged_batch_norm(z, one, torch.zeros(1, dtype=torch.float64), eps)[:, 0]
    (u * y).sum().backward()
    return xt.grad.numpy(), wt.grad.numpy()


# --------------------------------------------------------------------------------------
# A short training run: weight norm and effective learning rate
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainingRecord:
    r"""What :func:`train_scale_invariant` records at every step ``t``.

    ``row_norms[t, k]`` is $\|w_k\|$ of row $k$ of the BN'd weight before step ``t`` (one
    more entry than steps); ``row_angles[t, k]`` the angle (radians) between $w_k$ before
    and after step ``t``; ``loss[t]`` the minibatch loss; ``grad_sq[t]`` $\|G_t\|_F^2$ of
    the loss gradient (weight decay excluded); ``cosine[t]`` the largest
    $|\cos(w_k, g_k)|$ over rows.
    """

    lr: float
    weight_decay: float
    optimizer: str
    row_norms: np.ndarray
    row_angles: np.ndarray
    loss: np.ndarray
    grad_sq: np.ndarray
    cosine: np.ndarray

    @property
    def weight_norm(self) -> np.ndarray:
        r"""$\|W\|_F$ before every step."""
        return np.sqrt(np.sum(self.row_norms**2, axis=1))

    @property
    def angular_update(self) -> np.ndarray:
        r"""The angle each row turns through at a step, averaged over the rows."""
        return self.row_angles.mean(axis=1)

    @property
    def effective_lr(self) -> np.ndarray:
        r"""The mean over rows of $\eta/\|w_k\|^2$: the effective learning rate of plain SGD.

        It is the SGD quantity whatever ``optimizer`` was: with Adam the step angle scales
        as $\eta/\|w_k\|$ instead.
        """
        return np.mean(self.lr / self.row_norms**2, axis=1)


def _teacher_data(n: int, d: int, classes: int, seed: int) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    teacher = torch.randn(d, classes, generator=g, dtype=torch.float64)
    y = torch.argmax(torch.tanh(x @ teacher) + 0.5 * (x**2) @ teacher / d, dim=1)
    return x, y


OPTIMIZERS = ("sgd", "adam")


def train_scale_invariant(
    steps: int = 600,
    lr: float = 0.5,
    weight_decay: float = 0.0,
    init_scale: float = 1.0,
    lr_other: float = 0.05,
    eps: float = 1e-5,
    hidden: int = 32,
    batch_size: int = 32,
    seed: int = 0,
    optimizer: str = "sgd",
    adam_betas: tuple[float, float] = (0.9, 0.999),
    adam_eps: float = 1e-8,
) -> TrainingRecord:
    r"""Train $x \mapsto V\,\mathrm{ReLU}(\mathrm{BN}(W x))$ with cross-entropy and record $W$.

    $W$ is updated by ``optimizer`` with learning rate ``lr``:

    * ``"sgd"``: $W \leftarrow (1 - \eta\lambda) W - \eta G$ (``weight_decay`` $= \lambda$);
    * ``"adam"``: Adam with ``adam_betas`` and ``adam_eps``, no weight decay. Adam divides
      each gradient entry by its running root mean square, so a gradient $1/a$ times
      smaller gives the same step, and the angle a row turns through scales as
      $\eta/\|w_k\|$ (for SGD: as $\eta/\|w_k\|^2$).

    BN's $\gamma, \beta$ and $V$ are updated by plain SGD with ``lr_other`` and no decay.
    The data (512 points in 16 dimensions, 4 classes from a fixed random teacher), the
    initialization (``W`` scaled by ``init_scale``) and the minibatch order come from ``seed``.
    """
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}; got {optimizer!r}")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer; got {steps!r}")
    if not lr > 0:
        raise ValueError(f"lr must be positive; got {lr!r}")
    if not 0 <= lr * weight_decay < 1:
        raise ValueError(
            f"lr * weight_decay must be in [0, 1) (the decay factor 1 - lr * weight_decay must "
            f"stay positive); got lr = {lr!r}, weight_decay = {weight_decay!r}"
        )
    if optimizer == "adam" and weight_decay != 0:
        raise ValueError("weight decay is modelled for SGD only; use weight_decay=0 with Adam")
    x, y = _teacher_data(512, 16, 4, seed)
    g = torch.Generator().manual_seed(seed + 1)
    w = (init_scale * torch.randn(hidden, 16, generator=g, dtype=torch.float64) / 4.0)
    w.requires_grad_(True)
    # BN's affine parameters around the staged formula, which accepts eps = 0 (the exact
    # invariance); the layer, like torch's, refuses eps = 0 with batch statistics.
    gamma = torch.ones(hidden, dtype=torch.float64, requires_grad=True)
    beta = torch.zeros(hidden, dtype=torch.float64, requires_grad=True)

    def bn(z: Tensor) -> Tensor:
        return staged_batch_norm(z, gamma, beta, eps)

    v = (torch.randn(4, hidden, generator=g, dtype=torch.float64) / hidden**0.5).requires_grad_()
    others = [gamma, beta, v]
    order = torch.randint(0, x.shape[0], (steps, batch_size), generator=g)
    beta1, beta2 = adam_betas
    first = torch.zeros_like(w)
    second = torch.zeros_like(w)

    row_norms = [w.detach().norm(dim=1).numpy().copy()]
    losses, grad_sq, angles, cosines = [], [], [], []
    for t in range(steps):
        xb, yb = x[order[t]], y[order[t]]
        loss = F.cross_entropy(F.relu(bn(xb @ w.T)) @ v.T, yb)
        grads = torch.autograd.grad(loss, [w, *others])
        with torch.no_grad():
            gw = grads[0]
            before = w.detach().clone()
            cos = (before * gw).sum(1).abs() / (before.norm(dim=1) * gw.norm(dim=1) + 1e-300)
            if optimizer == "sgd":
                w.mul_(1.0 - lr * weight_decay).sub_(lr * gw)
            else:
                first.mul_(beta1).add_((1 - beta1) * gw)
                second.mul_(beta2).add_((1 - beta2) * gw * gw)
                m_hat = first / (1 - beta1 ** (t + 1))
                v_hat = second / (1 - beta2 ** (t + 1))
                w.sub_(lr * m_hat / (v_hat.sqrt() + adam_eps))
            for p, gp in zip(others, grads[1:], strict=True):
                p.sub_(lr_other * gp)
            after = w.detach()
            c = (before * after).sum(1) / (before.norm(dim=1) * after.norm(dim=1))
            angles.append(torch.arccos(c.clamp(-1.0, 1.0)).numpy().copy())
        losses.append(float(loss.detach()))
        grad_sq.append(float((gw**2).sum()))
        cosines.append(float(cos.max()))
        row_norms.append(w.detach().norm(dim=1).numpy().copy())
    return TrainingRecord(
        lr=lr,
        weight_decay=weight_decay,
        optimizer=optimizer,
        row_norms=np.array(row_norms),
        row_angles=np.array(angles),
        loss=np.array(losses),
        grad_sq=np.array(grad_sq),
        cosine=np.array(cosines),
    )


def equilibrium_angular_update(lr: float, weight_decay: float) -> float:
    r"""$\theta^\star = \arccos(1 - \eta\lambda)$: the angle per SGD step at a steady norm.

    A step of SGD with weight decay is $w' = (1 - \eta\lambda) w - \eta g$ with $g \perp w$,
    so $\cos\theta = (1-\eta\lambda)\|w\|/\|w'\|$ and $\sin\theta = \eta\|g\|/\|w'\|$ (and
    $\tan\theta = \eta\|g\|/((1-\eta\lambda)\|w\|)$). The norm is unchanged,
    $\|w'\| = \|w\|$, exactly when $\eta\|g\|/\|w\| = \sqrt{2\eta\lambda - (\eta\lambda)^2}$;
    then $\sin\theta = \sqrt{2\eta\lambda - (\eta\lambda)^2}$ and $\cos\theta = 1 - \eta\lambda$.
    Returns $\theta^\star$ in radians, about $\sqrt{2\eta\lambda}$ for small $\eta\lambda$.
    Needs $0 \le \eta\lambda < 1$.
    """
    p = lr * weight_decay
    if not 0 <= p < 1:
        raise ValueError(
            f"lr * weight_decay must be in [0, 1) for the decay factor 1 - lr * weight_decay to "
            f"stay positive; got {p!r}"
        )
    return float(np.arccos(1.0 - p))


# --------------------------------------------------------------------------------------
# The layer-Jacobian claim: J J^T under whitened inputs
# --------------------------------------------------------------------------------------


def whiten(x: np.ndarray) -> np.ndarray:
    r"""ZCA whitening in the sample: $(X - \bar X) C^{-1/2}$.

    $C$ is the biased sample covariance, so the result has mean 0 and covariance $I$.
    """
    x = np.asarray(x, dtype=np.float64)
    centred = x - x.mean(axis=0)
    cov = centred.T @ centred / x.shape[0]
    vals, vecs = np.linalg.eigh(cov)
    return centred @ (vecs / np.sqrt(vals)) @ vecs.T


def bn_layer_jacobian(x: np.ndarray, w: np.ndarray, eps: float = 0.0) -> np.ndarray:
    r"""$J = \mathrm{diag}(1/\sqrt{\sigma_k^2 + \epsilon})\,W$, the Jacobian of $\mathrm{BN}(W x)$.

    The batch statistics $\sigma_k^2$ (of row $k$ of ``w`` over the batch ``x``) are held
    fixed. ``x`` is ``(N, d)``, ``w`` is ``(k, d)``; returns ``(k, d)``.
    """
    z = np.asarray(x, dtype=np.float64) @ np.asarray(w, dtype=np.float64).T
    var = z.var(axis=0)
    return w / np.sqrt(var + eps)[:, None]


# --------------------------------------------------------------------------------------
# Deep MLPs at initialization, with and without BN
# --------------------------------------------------------------------------------------


INITS = ("gaussian", "orthogonal")


def deep_mlp_weights(
    depth: int, width: int, seed: int = 0, init: str = "gaussian"
) -> list[Tensor]:
    r"""``depth`` square weights of the same second moment as He initialization.

    * ``"gaussian"``: entries $\mathcal N(0, 2/\text{width})$ (He initialization).
    * ``"orthogonal"``: $\sqrt 2\,Q$ with $Q$ a random orthogonal matrix (the Q factor of
      the same Gaussian draws, signs fixed so that it is uniformly distributed): the rows are
      orthogonal, each of norm $\sqrt 2$.
    """
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}; got {init!r}")
    g = torch.Generator().manual_seed(seed)
    weights = []
    for _ in range(depth):
        a = torch.randn(width, width, generator=g, dtype=torch.float64)
        if init == "orthogonal":
            q, r = torch.linalg.qr(a)
            weights.append(q * torch.sign(torch.diagonal(r)) * 2.0**0.5)
        else:
            weights.append(a * (2.0 / width) ** 0.5)
    return weights


ARCHITECTURES = ("plain", "residual")


def _identity(z: Tensor) -> Tensor:
    return z


#: The nonlinearities $\phi$ of the deep networks, by name.
ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "relu": torch.relu,
    "tanh": torch.tanh,
    "linear": _identity,
}


def _detached_batch_norm(z: Tensor, eps: float) -> Tensor:
    r"""$(z - \mu_B)/\sqrt{\sigma_B^2 + \epsilon}$ with $\mu_B, \sigma_B^2$ constants for autograd.

    The same operations as :func:`bncourse.layer.staged_batch_norm` (so the forward values
    are identical), but the backward pass treats the batch statistics as constants: no
    gradient flows from one example to another through them.
    """
    mean = z.mean(dim=0, keepdim=True).detach()
    centred = z - mean
    var = (centred * centred).mean(dim=0, keepdim=True).detach()
    return centred / torch.sqrt(var + eps)


def deep_mlp_forward(
    x: Tensor, weights: list[Tensor], use_bn: bool, eps: float = 1e-5,
    architecture: str = "plain", activation: str = "relu", detach_statistics: bool = False,
) -> list[Tensor]:
    r"""The activations $h_0 = x, h_1, \dots, h_L$ of a deep MLP, as a list.

    * ``"plain"``: $h_l = \phi(\mathrm{BN}(h_{l-1} W_l^T))$, and $h_L = \mathrm{BN}(h_{L-1}
      W_L^T)$ without $\phi$; no skip connections.
    * ``"residual"``: $h_l = h_{l-1} + \phi(\mathrm{BN}(h_{l-1}))\, W_l^T$, the
      pre-activation residual block, with BN at the start of each residual branch.

    $\phi$ is ``activation`` (a key of :data:`ACTIVATIONS`). BN (training mode,
    $\gamma = 1$, $\beta = 0$) is left out when ``use_bn`` is False. With
    ``detach_statistics`` the forward pass is the same, but the backward pass holds the batch
    mean and variance fixed (:func:`_detached_batch_norm`): the examples are not coupled.
    """
    if architecture not in ARCHITECTURES:
        raise ValueError(f"architecture must be one of {ARCHITECTURES}; got {architecture!r}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {tuple(ACTIVATIONS)}; got {activation!r}")
    if not weights:
        raise ValueError("weights is empty: a network needs at least one layer")
    phi = ACTIVATIONS[activation]
    hs = [x]
    width = weights[0].shape[0]
    ones = torch.ones(width, dtype=x.dtype)
    zeros = torch.zeros(width, dtype=x.dtype)

    def norm(z: Tensor) -> Tensor:
        if not use_bn:
            return z
        if detach_statistics:
            return _detached_batch_norm(z, eps)
        return staged_batch_norm(z, ones, zeros, eps)

    for layer, w in enumerate(weights, start=1):
        h = hs[-1]
        if architecture == "residual":
            hs.append(h + phi(norm(h)) @ w.T)
        else:
            z = norm(h @ w.T)
            hs.append(phi(z) if layer < len(weights) else z)
    return hs


def _readout(width: int, batch: int, seed: int) -> Tensor:
    g = torch.Generator().manual_seed(seed + 10_000)
    return torch.randn(batch, width, generator=g, dtype=torch.float64)


def _input_batch(width: int, batch: int, seed: int) -> Tensor:
    g = torch.Generator().manual_seed(seed + 20_000)
    return torch.randn(batch, width, generator=g, dtype=torch.float64)


def gradient_norms_by_depth(
    depth: int, width: int, batch: int, use_bn: bool, seed: int = 0,
    architecture: str = "plain", activation: str = "relu", init: str = "gaussian",
    detach_statistics: bool = False,
) -> np.ndarray:
    r"""$\|\partial L/\partial h_l\|_F$ for $l = 0, \dots, L$, where $L = \sum c \odot h_L$.

    $c$ is a fixed random readout; the weights, input batch and $c$ come from ``seed``.
    ``architecture``, ``activation`` and ``detach_statistics`` are those of
    :func:`deep_mlp_forward`, ``init`` that of :func:`deep_mlp_weights`.
    """
    x = _input_batch(width, batch, seed)
    hs = deep_mlp_forward(x.requires_grad_(), deep_mlp_weights(depth, width, seed, init),
                          use_bn, architecture=architecture, activation=activation,
                          detach_statistics=detach_statistics)
    loss = (_readout(width, batch, seed) * hs[-1]).sum()
    grads = torch.autograd.grad(loss, hs)
    return np.array([float(gr.norm()) for gr in grads])


def input_output_jacobian(
    depth: int, width: int, batch: int, use_bn: bool, seed: int = 0,
    architecture: str = "plain",
) -> np.ndarray:
    r"""$\partial\,\mathrm{vec}(h_L)/\partial\,\mathrm{vec}(x)$ over the whole batch.

    Shape ``(batch * width, batch * width)``, row-major ``vec``; ``architecture`` as in
    :func:`deep_mlp_forward`.

    In training mode BN couples the examples of a batch, so the Jacobian is taken over the
    whole batch at once, not one example at a time.
    """
    x = _input_batch(width, batch, seed)
    weights = deep_mlp_weights(depth, width, seed)

    def f(inp: Tensor) -> Tensor:
        return deep_mlp_forward(inp, weights, use_bn, architecture=architecture)[-1].reshape(-1)

    jac = torch.autograd.functional.jacobian(f, x, vectorize=True)
    return jac.reshape(batch * width, batch * width).numpy()


# --------------------------------------------------------------------------------------
# Why the gradient grows: the gain per layer, predicted and measured
# --------------------------------------------------------------------------------------

#: The standard normal density beyond this is below 1e-30: the quadrature stops there.
_GAUSS_CUTOFF = 12.0


def layer_gain(activation: str, nodes: int = 200) -> float:
    r"""$G = \sqrt{\mathbb E[\phi'(z)^2] / \operatorname{Var}\phi(z)}$, $z \sim \mathcal N(0, 1)$.

    The growth per layer of the gradient norm that mean field theory predicts for a plain
    network $h_l = \phi(\mathrm{BN}(W_l h_{l-1}))$ at initialization, whatever the variance
    of the weights. $\phi$ is ``activation`` (a key of :data:`ACTIVATIONS`), $\phi'$ its
    derivative by autograd; the expectations are integrals against the Gaussian density,
    computed by Gauss-Legendre quadrature with ``nodes`` points on each of $[-12, 0]$ and
    $[0, 12]$ (a kink at 0, as ReLU's, falls between the two pieces). $G \ge 1$ by the
    Gaussian Poincare inequality, with equality only for an affine $\phi$; for ReLU
    $G = \sqrt{\pi/(\pi - 1)}$.
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {tuple(ACTIVATIONS)}; got {activation!r}")
    t, wt = np.polynomial.legendre.leggauss(nodes)
    half = _GAUSS_CUTOFF / 2
    z = np.concatenate([half * (t - 1.0), half * (t + 1.0)])        # [-12, 0] and [0, 12]
    weight = np.concatenate([wt, wt]) * half * np.exp(-z**2 / 2) / math.sqrt(2 * math.pi)
    zt = torch.tensor(z, dtype=torch.float64, requires_grad=True)
    out = ACTIVATIONS[activation](zt)
    (slope,) = torch.autograd.grad(out.sum(), zt)
    phi, dphi = out.detach().numpy(), slope.numpy()
    mean = weight @ phi
    var = weight @ (phi - mean) ** 2
    return float(math.sqrt((weight @ dphi**2) / var))


def log_linear_fit(x: Sequence[float], y: Sequence[float]) -> tuple[float, float, float]:
    r"""Least squares $\log y \approx a + b x$: returns $(b, a, R^2)$.

    $R^2$ is the share of the variance of $\log y$ that the line explains (1 for points
    exactly on a line).
    """
    x = np.asarray(x, dtype=np.float64)
    ly = np.log(np.asarray(y, dtype=np.float64))
    b, a = np.polyfit(x, ly, 1)
    resid = ly - (a + b * x)
    r2 = 1.0 - float(resid @ resid) / float(np.sum((ly - ly.mean()) ** 2))
    return float(b), float(a), r2


def growth_per_layer(
    depths: Sequence[int], width: int, batch: int, seed: int = 0, **network: object
) -> tuple[float, float]:
    r"""The growth per layer of the gradient of plain BN networks, fitted over a depth sweep.

    For each depth $L$ in ``depths`` a network is built (:func:`gradient_norms_by_depth`,
    plain, with BN, ``network`` passing ``activation``, ``init`` and ``detach_statistics``)
    and the ratio $\|\partial L/\partial h_0\| / \|\partial L/\partial h_L\|$ is measured;
    $\log$ ratio $\approx a + L \log r$ is fitted (:func:`log_linear_fit`). Returns
    $(r, R^2)$: $r$ is the growth per layer, $R^2$ near 1 says the growth is exponential.
    """
    ratios = []
    for depth in depths:
        g = gradient_norms_by_depth(depth, width, batch, use_bn=True, seed=seed, **network)
        ratios.append(g[0] / g[-1])
    slope, _, r2 = log_linear_fit(depths, ratios)
    return math.exp(slope), r2


def residual_ratio_mean_field(depth: int) -> float:
    r"""$\prod_{l=1}^{L} \sqrt{1 + 1/(1 + c\,(l - 1))}$, $c = 1 - 1/\pi$: the residual network's
    $\|\partial L/\partial h_0\| / \|\partial L/\partial h_L\|$ by mean field theory.

    For the pre-activation network of :func:`deep_mlp_forward` with ReLU, BN and He
    initialization ($s^2 = 2$) on an input of unit variance: block $l$ adds to the skip path
    a branch of variance $s^2 \operatorname{Var}\mathrm{ReLU}(z) = c$, so the stream entering
    it has variance $1 + c\,(l - 1)$, which the branch's BN divides by; the branch adds
    $s^2\,\mathbb E[\mathrm{ReLU}'(z)^2] = 1$ over that variance to the squared gradient.
    For large $L$ the product grows as the power $L^{G^2/2}$, with $G^2 = \pi/(\pi - 1)$
    (:func:`layer_gain`): a power of the depth, not an exponential.
    """
    c = 1.0 - 1.0 / math.pi
    return math.prod(math.sqrt(1.0 + 1.0 / (1.0 + c * (lay - 1))) for lay in range(1, depth + 1))
