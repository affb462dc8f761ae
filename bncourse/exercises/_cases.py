"""Seeded inputs of the function exercises, and the rule every case list follows.

Each function exercise runs on its own hand-picked cases, each chosen to expose a mistake,
and on the cases of **the case rule**, derived from what its statement allows:

1. **Every rank the statement allows**: one case per rank of ``x`` ((N, C) is rank 2,
   (N, C, L) rank 3, (N, C, H, W) rank 4, (N, C, D, H, W) rank 5, one channel's (m,)
   rank 1). An answer that works only for the ranks it was tried on (axes written as
   ``(0, 2, 3) if x.ndim == 4 else (0,)``, or hard-coded up to rank 4) fails.
   A per-channel vector of moments ``(C,)`` counts as rank 1.
2. **A negative gamma and a zero gamma**, when the exercise takes gamma: a case whose gamma
   has a negative entry and a case whose gamma has a zero entry. An answer that loses the
   sign of gamma (``abs(gamma)``, ``sqrt(gamma**2 / (var + eps))``) or divides by it fails.
3. **C = 1**, when the input has a channel axis: a one-channel case, at the highest rank
   allowed. An answer that calls ``.squeeze()`` (and so drops the channel axis) fails.
4. **float32**, when the statement promises the dtype of ``x``: every array of the case in
   float32, scalars as Python floats. The output must be float32; its values are compared
   with the float64 reference within float32 tolerances. An answer that always returns
   float64 fails.
5. **A repeated shape with new values**: the shapes of the first rule case again, with new
   values. An answer memoized by input shape fails.

:data:`RULES` gives, for each function exercise, what its statement allows: the roles of
its arguments (which one is ``x``, ``gamma``, ...), the ranks of ``x`` and whether the dtype
of ``x`` is promised. :meth:`CaseRule.cases` builds the rule's cases; the checker appends
them to the exercise's own cases, and ``tests/test_exercises.py`` checks that every
function exercise's full case list satisfies the rule. A new function exercise needs an
entry in :data:`RULES`.
"""

from __future__ import annotations

from dataclasses import dataclass

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


# --------------------------------------------------------------------------------------
# The case rule
# --------------------------------------------------------------------------------------

#: Argument roles a rule case can fill. ``x`` is the input (``batch`` for the running
#: statistics); ``x_hat`` a normalized input of the same shape; ``dy`` an upstream gradient;
#: ``gamma``/``beta`` per-channel vectors (a float when ``x`` has rank 1); ``eps`` and
#: ``momentum`` floats; ``running_mean``/``running_var`` per-channel vectors; ``batch_size``
#: an int that leaves a last batch of at least two rows.
ROLES = ("x", "x_hat", "dy", "gamma", "beta", "eps", "momentum", "running_mean",
         "running_var", "batch_size", "weight", "bias", "count", "mean", "m2")
#: The roles that can stand for "x" (the array whose rank and dtype the rule is about), in
#: order of preference; ``weight`` has shape (C, fan_in), its channels on axis 0; ``mean``
#: (with ``m2``, a sum of squared deviations, and ``count``, an int) is a per-channel (C,)
#: vector of moments.
_X_ROLES = ("x", "x_hat", "dy", "weight", "mean")

#: The shape of ``x`` used for each rank, with C channels.
_SHAPES = {1: lambda c: (7,), 2: lambda c: (8, c), 3: lambda c: (3, c, 5),
           4: lambda c: (2, c, 3, 4), 5: lambda c: (2, c, 2, 3, 2)}


@dataclass(frozen=True)
class CaseRule:
    """What a function exercise's statement allows: argument ``roles``, ranks of ``x``,
    and whether it promises the dtype of ``x`` (``dtype_promised``)."""

    exercise_id: str
    roles: tuple[str, ...]
    ranks: tuple[int, ...]
    dtype_promised: bool = False
    seed: int = 0
    #: False when the exercise's own cases already follow the rule (it is then only checked).
    generate: bool = True

    def __post_init__(self) -> None:
        unknown = set(self.roles) - set(ROLES)
        if unknown or not set(self.roles) & set(_X_ROLES):
            raise ValueError(f"{self.exercise_id}: roles {self.roles} (known: {ROLES})")
        if not self.ranks or any(r not in _SHAPES for r in self.ranks):
            raise ValueError(f"{self.exercise_id}: ranks {self.ranks} (1 to 5)")

    @property
    def has_gamma(self) -> bool:
        return "gamma" in self.roles

    @property
    def has_channels(self) -> bool:
        return max(self.ranks) >= 2 or "mean" in self.roles or "weight" in self.roles

    def _args(self, r: np.random.Generator, rank: int, c: int, gamma: str,
              dtype: type = np.float64) -> tuple:
        shape = self._shape(rank, c)
        loc, scale = r.uniform(-2.0, 2.0), r.uniform(0.5, 2.0)
        x = r.normal(loc, scale, shape)
        axes = (0, *range(2, rank)) if rank >= 2 else (0,)
        n_gamma = c if rank >= 2 else 1
        g = r.uniform(0.5, 2.0, n_gamma)
        if gamma == "negative":
            g[0] = -g[0]
        elif gamma == "zero":
            g[-1] = 0.0
            if n_gamma > 1:
                g[0] = -g[0]
        values = {
            "x": x,
            "x_hat": ((x - x.mean(axis=axes, keepdims=True)) / x.std(axis=axes, keepdims=True)
                      if "x_hat" in self.roles else None),
            "dy": r.normal(0.0, 1.0, shape),
            "gamma": g if rank >= 2 else float(g[0]),
            "beta": r.normal(0.0, 1.0, c) if rank >= 2 else float(r.normal()),
            "eps": 1e-3,
            "momentum": 0.2,
            "running_mean": r.normal(0.0, 1.0, c),
            "running_var": r.uniform(0.5, 2.0, c),
            "batch_size": 3,  # 8 rows: batches of 3, 3 and 2
            "weight": r.normal(0.0, 1.0, (c, 4)),
            "bias": r.normal(0.0, 1.0, c),
        }
        fresh = {
            "count": lambda: int(r.integers(1, 10)),
            "mean": lambda: r.normal(0.0, 2.0, c),
            "m2": lambda: r.uniform(0.1, 5.0, c),
        }
        args = tuple(fresh[role]() if role in fresh else values[role] for role in self.roles)
        return tuple(a.astype(dtype) if isinstance(a, np.ndarray) else a for a in args)

    def _x(self, args: tuple) -> np.ndarray:
        role = next(r for r in _X_ROLES if r in self.roles)
        return args[self.roles.index(role)]

    def _channels(self, args: tuple) -> int | None:
        for role in ("gamma", "beta", "running_mean", "running_var", "bias"):
            if role in self.roles and isinstance(args[self.roles.index(role)], np.ndarray):
                return int(args[self.roles.index(role)].shape[0])
        x = self._x(args)
        if "weight" in self.roles or "mean" in self.roles:
            return int(x.shape[0])
        return int(x.shape[1]) if x.ndim >= 2 else None

    def problems(self, cases: list[Case]) -> list[str]:
        """What the case list ``cases`` lacks of the rule (empty when it follows it)."""
        out = []
        xs = [self._x(c.args) for c in cases]
        for rank in self.ranks:
            if not any(x.ndim == rank for x in xs):
                out.append(f"no case of rank {rank}")
        if self.has_gamma:
            gammas = [np.asarray(c.args[self.roles.index("gamma")]) for c in cases]
            if not any((g < 0).any() for g in gammas):
                out.append("no negative gamma")
            if not any((g == 0).any() for g in gammas):
                out.append("no zero gamma")
        if self.has_channels and not any(self._channels(c.args) == 1 for c in cases):
            out.append("no one-channel case (C = 1)")
        if self.dtype_promised and not any(x.dtype == np.float32 for x in xs):
            out.append("no float32 case")

        def shapes(case: Case) -> tuple:
            return tuple(a.shape if isinstance(a, np.ndarray) else type(a) for a in case.args)

        repeated = any(
            shapes(a) == shapes(b) and not all(
                np.array_equal(u, v) if isinstance(u, np.ndarray) else u == v
                for u, v in zip(a.args, b.args, strict=True))
            for i, a in enumerate(cases) for b in cases[i + 1:]
        )
        if not repeated:
            out.append("no repeated shape with new values")
        return out

    def _shape(self, rank: int, c: int) -> tuple[int, ...]:
        return (c,) if "mean" in self.roles else _SHAPES[rank](c)

    def cases(self) -> list[Case]:
        """The cases the rule asks for, seeded (the same list on every call); none when the
        exercise's own cases follow the rule already (``generate=False``)."""
        if not self.generate:
            return []
        r = rng(20261300 + self.seed)
        first = self.ranks[0]
        top = max(self.ranks)
        cases = []
        for rank in self.ranks:
            cases.append(Case(f"rule: x of shape {self._shape(rank, 3)}",
                              self._args(r, rank, 3, "positive")))
        if self.has_gamma:
            where = min(top, 3) if min(top, 3) in self.ranks else first
            cases.append(Case(f"rule: a negative gamma, x of shape {self._shape(where, 3)}",
                              self._args(r, where, 3, "negative")))
            cases.append(Case(f"rule: a zero gamma, x of shape {self._shape(top, 3)}",
                              self._args(r, top, 3, "zero")))
        if self.has_channels:
            cases.append(Case(f"rule: one channel (C = 1), x of shape {self._shape(top, 1)}",
                              self._args(r, top, 1, "negative")))
        if self.dtype_promised:
            cases.append(Case(f"rule: float32 input, x of shape {self._shape(first, 3)}",
                              self._args(r, first, 3, "negative", np.float32)))
        cases.append(Case(f"rule: x of shape {self._shape(first, 3)} again, with new values",
                          self._args(r, first, 3, "positive")))
        return cases


_ALL_RANKS = (2, 3, 4, 5)

#: The case rule of every function exercise, by id (see the module's docstring).
RULES: dict[str, CaseRule] = {rule.exercise_id: rule for rule in (
    CaseRule("formula.forward", ("x", "gamma", "beta", "eps"), _ALL_RANKS,
             dtype_promised=True, seed=1),
    CaseRule("formula.identity", ("x", "eps"), (2, 4), seed=2),
    CaseRule("gradients.backward", ("dy", "x", "gamma", "eps"), _ALL_RANKS, seed=3),
    CaseRule("gradients.param_grads", ("dy", "x_hat"), _ALL_RANKS, seed=4),
    CaseRule("parameters.running_stats", ("running_mean", "running_var", "x", "momentum"),
             _ALL_RANKS, seed=5),
    CaseRule("parameters.cumulative", ("x", "batch_size"), (2,), seed=6),
    CaseRule("invariance.jacobian", ("x", "gamma", "eps"), (1,), dtype_promised=True, seed=7),
    CaseRule("porting.keras_update", ("running_mean", "running_var", "x", "momentum"),
             _ALL_RANKS, seed=9),
    CaseRule("distributed.merge", ("count", "mean", "m2", "count", "mean", "m2"), (1,),
             seed=8),
    CaseRule("inference.eval_backward",
             ("dy", "x", "gamma", "running_mean", "running_var", "eps"), _ALL_RANKS,
             dtype_promised=True, generate=False),
    CaseRule("inference.fold_linear",
             ("weight", "bias", "gamma", "beta", "running_mean", "running_var", "eps"), (2,),
             dtype_promised=True, generate=False),
)}
