"""Models for the tests of ``bncourse.doctor``, importable by ``python -m bncourse.doctor``."""

from __future__ import annotations

import torch
from torch import nn


def clean_net(seed: int = 0) -> nn.Sequential:
    """Conv without bias, BN, ReLU, twice, then a linear head; momentum 0.1 (torch's default)."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10),
    )


def batch(n: int = 32, seed: int = 1) -> torch.Tensor:
    """A batch of ``n`` 3x8x8 images (standard normal values)."""
    return torch.randn(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed))


def trained_clean_net(steps: int = 3) -> nn.Sequential:
    """:func:`clean_net` after a few SGD steps on batches of 32 (running statistics updated)."""
    model = clean_net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(steps):
        x = batch(seed=10 + step)
        y = torch.arange(32) % 10
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model


def clean_pair() -> tuple[nn.Module, torch.Tensor]:
    """The factory form that returns the model and its example input."""
    return trained_clean_net(), batch()


def biased_net() -> nn.Sequential:
    """A conv with a bias straight into a BN, and a Keras momentum; example from ``--shape``."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, momentum=0.99), nn.ReLU())


def not_a_model() -> str:
    """A factory that returns something that is not a model."""
    return "not a model"
