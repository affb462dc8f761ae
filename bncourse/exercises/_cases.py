"""Seeded inputs shared by the exercises: each one chosen to expose a mistake."""

from __future__ import annotations

import numpy as np

from .core import Case


def rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def forward_cases() -> list[Case]:
    """Inputs ``(x, gamma, beta, eps)`` for a training-mode forward pass."""
    r = rng(20260101)

    def params(c: int) -> tuple[np.ndarray, np.ndarray]:
        return r.uniform(0.5, 2.0, size=c), r.normal(0.0, 1.0, size=c)

    cases = []
    g, b = params(3)
    cases.append(Case("x of shape (8, 3), eps = 1e-5", (r.normal(0.0, 1.0, (8, 3)), g, b, 1e-5)))
    g, b = params(3)
    cases.append(Case("x of shape (6, 3) with a large eps = 0.5",
                      (r.normal(0.0, 0.5, (6, 3)), g, b, 0.5)))
    g, b = params(4)
    cases.append(Case("a tiny batch: x of shape (2, 4)", (r.normal(0.0, 2.0, (2, 4)), g, b, 1e-3)))
    g, b = params(3)
    x = r.normal(0.0, 1.0, (5, 3)) * np.array([1.0, 10.0, 0.1]) + np.array([1e3, -50.0, 7.0])
    cases.append(Case("x of shape (5, 3) with large offsets and different scales per channel",
                      (x, g, b, 1e-5)))
    g, b = params(3)
    cases.append(Case("a convolutional input of shape (N, C, H, W) = (2, 3, 4, 5)",
                      (r.normal(1.0, 2.0, (2, 3, 4, 5)), g, b, 1e-5)))
    g, b = params(2)
    cases.append(Case("a sequence input of shape (N, C, L) = (3, 2, 6)",
                      (r.normal(-1.0, 3.0, (3, 2, 6)), g, b, 1e-2)))
    return cases


def backward_cases() -> list[Case]:
    """Inputs ``(dy, x, gamma, eps)`` for the backward pass."""
    r = rng(20260202)
    cases = []
    for label, shape, loc, scale, eps in (
        ("x of shape (8, 3), eps = 1e-5", (8, 3), 0.0, 1.0, 1e-5),
        ("a tiny batch: x of shape (2, 3)", (2, 3), 1.0, 2.0, 1e-3),
        ("x of shape (6, 4) with a large eps = 0.5", (6, 4), 0.0, 0.5, 0.5),
        ("x of shape (5, 2) with a large offset", (5, 2), 100.0, 3.0, 1e-5),
        ("a convolutional input of shape (N, C, H, W) = (2, 3, 3, 4)", (2, 3, 3, 4), 0.5, 1.5,
         1e-5),
    ):
        c = shape[1]
        x = r.normal(loc, scale, shape)
        dy = r.normal(0.0, 1.0, shape)
        gamma = r.uniform(0.5, 2.0, c)
        cases.append(Case(label, (dy, x, gamma, eps)))
    return cases


def running_stats_cases() -> list[Case]:
    """Inputs ``(running_mean, running_var, batch, momentum)`` for one update."""
    r = rng(20260303)
    cases = []
    for label, n, c, momentum in (
        ("a batch of shape (8, 3), momentum = 0.1", 8, 3, 0.1),
        ("a tiny batch of shape (2, 3), momentum = 0.1", 2, 3, 0.1),
        ("a batch of shape (5, 4), momentum = 0.3", 5, 4, 0.3),
        ("a batch of shape (6, 2), momentum = 1.0 (keep only the new batch)", 6, 2, 1.0),
    ):
        running_mean = r.normal(0.0, 1.0, c)
        running_var = r.uniform(0.5, 2.0, c)
        batch = r.normal(2.0, 3.0, (n, c))
        cases.append(Case(label, (running_mean, running_var, batch, momentum)))
    return cases
