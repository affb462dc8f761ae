"""The Jacobian of training-mode batch normalization with respect to its input.

For one channel with values $x_1..x_m$:
$J_{ij} = \\partial y_i/\\partial x_j = \\frac{\\gamma}{\\sqrt{\\sigma^2+\\epsilon}}
\\big(\\delta_{ij} - \\frac{1}{m} - \\frac{\\hat{x}_i\\hat{x}_j}{m}\\big)$
with $\\hat x = (x - \\mu)/\\sqrt{\\sigma^2+\\epsilon}$, exactly, for any eps. With
$\\epsilon = 0$, $\\|\\hat x\\|^2 = m$ and $I - \\mathbf{1}\\mathbf{1}^T/m - \\hat{x}\\hat{x}^T/m$
is an orthogonal projection of rank $m - 2$; with $\\epsilon > 0$, $\\|\\hat x\\|^2 =
m\\sigma^2/(\\sigma^2+\\epsilon)$ and the eigenvalue along $\\hat x$ is
$\\epsilon/(\\sigma^2+\\epsilon)$ instead of 0.
Channels do not interact, so the full Jacobian is block diagonal.
"""

from __future__ import annotations

import numpy as np

from .functional import _check_batch, _check_channel_vector, _check_eps, _check_input

__all__ = ["batch_norm_jacobian"]


def batch_norm_jacobian(x: np.ndarray, gamma: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    """Per-channel Jacobians of ``y = BN(x)``: ``J[c, i, j] = dy[i, c] / dx[j, c]``, (C, N, N).

    ``x`` has shape ``(N, C)``; the Jacobian is computed in float64 and returned in the
    dtype of ``x``. Singular values per channel: ``m - 2`` equal to
    ``|gamma| / sqrt(sigma^2 + eps)``, one exactly 0 (direction ``1``, a shift of the whole
    channel) and one equal to ``|gamma| * eps / (sigma^2 + eps)^(3/2)`` (direction ``x_hat``,
    a rescaling of the channel), which is 0 when eps = 0.
    """
    x = _check_input(x)
    if x.ndim != 2:
        raise ValueError(
            f"batch_norm_jacobian takes x of shape (N, C); got {x.shape}. For a conv input, "
            f"move the spatial axes into the batch first: x.transpose(0, 2, 3, 1).reshape(-1, C)"
        )
    n, c = x.shape
    gamma = _check_channel_vector(gamma, c, "gamma")
    eps = _check_eps(eps)
    _check_batch(x)
    dtype = x.dtype
    x = x.astype(np.float64)
    mean = x.mean(axis=0)
    centred = x - mean
    var = np.mean(centred * centred, axis=0)
    inv_std = 1.0 / np.sqrt(var + eps)
    x_hat = (centred * inv_std).T  # (C, N)
    outer = x_hat[:, :, None] * x_hat[:, None, :]
    jac = np.eye(n)[None] - 1.0 / n - outer / n
    return ((gamma.astype(np.float64) * inv_std)[:, None, None] * jac).astype(dtype, copy=False)
