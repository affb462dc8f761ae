r"""Two distributions in one BN batch: one shared BN against one BN per domain.

The digits come in two domains: the clean (standardized) images, and the same kind of images
with a lower contrast and a brighter background, $x \mapsto a\,x + b$ on every standardized
pixel ($0 < a$). After a linear layer every channel of a shifted image is an affine function
of the clean channel with the positive scale $a$: a BN that sees one domain
at a time removes the shift exactly (up to $\epsilon$), while a BN that sees both in one batch
normalizes with the statistics of their mixture, which describe neither.

:class:`DomainMLP` is ``Linear -> BN -> ReLU`` per hidden width with either one BN per layer
shared by the domains, or one per domain with shared weights (the auxiliary BN of Xie et
al. 2020): in a batch that mixes the domains, each domain's examples are normalized, and the
running statistics updated, by their own BN. :func:`mixed_batch_experiment` trains both on
batches that are half clean and half shifted and tests each domain with its own BN.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from .training import DTYPE, DigitsData

__all__ = ["SHIFT", "shift_pixels", "DomainMLP", "train_mixed", "domain_accuracy",
           "MixedResult", "mixed_batch_experiment"]

#: The shifted domain's contrast and brightness, on the standardized pixels: $0.5\,x + 3$.
SHIFT = (0.5, 3.0)


def shift_pixels(x: Tensor, contrast: float = SHIFT[0], brightness: float = SHIFT[1]) -> Tensor:
    """Standardized digits ``x`` in another contrast and brightness: ``contrast * x + brightness``.

    The same affine map of every pixel (in standardized units), so that a linear layer turns
    it into an affine map of every channel with the positive scale ``contrast``.
    """
    if not isinstance(x, Tensor) or x.dim() != 2:
        raise ValueError(f"x must be a (n, features) tensor of standardized digits; "
                         f"got {getattr(x, 'shape', type(x).__name__)}")
    if not contrast > 0:
        raise ValueError(f"contrast must be positive (a negative one inverts the image); "
                         f"got {contrast!r}")
    return contrast * x + brightness


class DomainMLP(nn.Module):
    """``Linear -> BN -> ReLU`` per hidden width, then ``Linear``; ``domains`` BNs per layer.

    ``forward(x, domain)`` takes the domain of every example (int64, values in
    ``range(domains)``). With ``domains=1`` every example goes through the same BN whatever
    its domain; with more, the examples of domain ``d`` are normalized by BN ``d`` of each
    layer, which also keeps their running statistics. The linear layers are shared.
    """

    def __init__(self, widths: Sequence[int] = (64, 64), domains: int = 1, *,
                 in_features: int = 64, classes: int = 10, seed: int = 0,
                 dtype: torch.dtype = DTYPE) -> None:
        super().__init__()
        if not isinstance(domains, int) or domains < 1:
            raise ValueError(f"domains must be a positive integer; got {domains!r}")
        torch.manual_seed(seed)
        self.domains = domains
        self.linears = nn.ModuleList()
        self.norms = nn.ModuleList()
        previous = in_features
        for width in widths:
            self.linears.append(nn.Linear(previous, width, bias=False, dtype=dtype))
            self.norms.append(nn.ModuleList(nn.BatchNorm1d(width, dtype=dtype)
                                            for _ in range(domains)))
            previous = width
        self.head = nn.Linear(previous, classes, dtype=dtype)

    def forward(self, x: Tensor, domain: Tensor) -> Tensor:
        if domain.shape != x.shape[:1] or domain.dtype != torch.int64:
            raise ValueError(f"domain must be an int64 tensor of shape ({x.shape[0]},); "
                             f"got {domain.dtype} {tuple(domain.shape)}")
        if domain.numel() and int(domain.min()) < 0:
            raise ValueError("domain ids must be non-negative")
        if self.domains > 1 and domain.numel() and int(domain.max()) >= self.domains:
            raise ValueError(f"domain ids must be below {self.domains}; got {int(domain.max())}")
        h = x
        for linear, norms in zip(self.linears, self.norms, strict=True):
            h = linear(h)
            if self.domains == 1:
                h = norms[0](h)
            else:
                out = torch.empty_like(h)
                for d, bn in enumerate(norms):
                    rows = domain == d
                    if bool(rows.any()):
                        out[rows] = bn(h[rows])
                h = out
            h = torch.relu(h)
        return self.head(h)


def train_mixed(model: DomainMLP, domains_x: Sequence[Tensor], y: Tensor, *, epochs: int,
                batch_size: int, lr: float, seed: int) -> DomainMLP:
    """Train on batches with ``batch_size`` examples of every domain (SGD, momentum 0.9).

    ``domains_x[d]`` holds the training inputs in domain ``d`` (the same images, so the same
    labels ``y``); each domain is shuffled on its own, so a batch holds different images in
    each domain. Returns ``model``, trained in place and left in eval mode.
    """
    n = y.shape[0]
    if any(x.shape[0] != n for x in domains_x):
        raise ValueError("every domain needs the same number of examples as y")
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    model.train()
    for _ in range(epochs):
        orders = [torch.randperm(n, generator=g) for _ in domains_x]
        for start in range(0, n - batch_size + 1, batch_size):
            idx = [order[start:start + batch_size] for order in orders]
            xb = torch.cat([x[i] for x, i in zip(domains_x, idx, strict=True)])
            yb = torch.cat([y[i] for i in idx])
            db = torch.repeat_interleave(torch.arange(len(domains_x)), batch_size)
            loss = nn.functional.cross_entropy(model(xb, db), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return model.eval()


@torch.no_grad()
def domain_accuracy(model: DomainMLP, x: Tensor, y: Tensor, domain: int) -> float:
    """Eval-mode accuracy (percent) on ``x`` with every example routed to BN ``domain``."""
    was = model.training
    model.eval()
    try:
        d = torch.full((x.shape[0],), domain, dtype=torch.int64)
        return 100 * float((model(x, d).argmax(dim=1) == y).double().mean())
    finally:
        model.train(was)


@dataclass(frozen=True)
class MixedResult:
    """Test accuracy (percent), ``[seed, domain]``, of one shared BN and of one BN per domain."""

    seeds: tuple[int, ...]
    shared: np.ndarray
    per_domain: np.ndarray


def mixed_batch_experiment(data: DigitsData, seeds: Sequence[int] = tuple(range(10)), *,
                           widths: Sequence[int] = (64, 64), epochs: int = 10,
                           batch_size: int = 16, lr: float = 0.003) -> MixedResult:
    """Train :class:`DomainMLP` with one shared BN and with one BN per domain, per seed.

    Both arms share the seed (initial weights and batch order); batches hold ``batch_size``
    clean and ``batch_size`` shifted examples. Each test domain is evaluated with its own BN
    (the shared arm has only one). The default ``lr`` is the rate that
    ``python -m bncourse.distributed.ddp_buffers`` chose on a validation split (stored with
    its scores in ``book/data/wild_ddp.json``).
    """
    train_x = [data.x_train, shift_pixels(data.x_train)]
    test_x = [data.x_test, shift_pixels(data.x_test)]
    shared = np.zeros((len(seeds), 2))
    per_domain = np.zeros((len(seeds), 2))
    for k, seed in enumerate(seeds):
        for domains, out in ((1, shared), (2, per_domain)):
            model = DomainMLP(widths, domains, seed=seed)
            train_mixed(model, train_x, data.y_train, epochs=epochs, batch_size=batch_size,
                        lr=lr, seed=seed)
            for d in range(2):
                out[k, d] = domain_accuracy(model, test_x[d], data.y_test, d if domains > 1 else 0)
    return MixedResult(tuple(seeds), shared, per_domain)
