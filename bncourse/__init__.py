"""bncourse: the companion package of the batch-normalization course.

Layers, each using only those above it:

* ``bncourse.functional``: the formulas in NumPy (the reference).
* ``bncourse.layer``: the same formulas as a PyTorch module and autograd Function
  (``bncourse.BatchNorm``).
* ``bncourse.gradcheck``, ``bncourse.jacobian``, ``bncourse.memory``, ``bncourse.analysis``,
  ``bncourse.networks``, ``bncourse.invariance``, ``bncourse.freezing``,
  ``bncourse.training``, ``bncourse.inference``: analysis helpers, small networks,
  training loops and data.
* ``bncourse.normalization``: the family of normalizations as a choice of axes, ghost BN.
* ``bncourse.distributed``: synchronized BN on ``torch.distributed`` and its launcher.
* ``bncourse.ports``: BN layers and small networks converted to and from Keras 3 and Flax NNX.
* ``bncourse.why``: the experiments that put the explanations of why BN helps on trial.
* ``bncourse.wild``, ``bncourse.mixed_batches``: what the batch leaks, test data that shifts,
  two distributions in one batch (running statistics under DDP are in ``bncourse.distributed``).
* ``bncourse.doctor``: ``diagnose(model, example_input)``, the common BN pitfalls of a model
  (``python -m bncourse.doctor module:factory``).
* ``bncourse.bench``: the benchmark behind ``make bench``.
* ``bncourse.claims``: glue a computed number into the prose, assert a checked statement.
* ``bncourse.exercises``: auto-checked exercises and their catalogues of mistakes.
* ``bncourse.plotting``: figures (the only module that imports matplotlib).

``import bncourse`` loads NumPy only; torch is imported the first time a torch-based name
such as ``bncourse.BatchNorm`` is used.
"""

from __future__ import annotations

import importlib
from typing import Any

from . import functional

__version__ = "0.4.0"

_LAZY_ATTRIBUTES = {
    "BatchNorm": ("bncourse.layer", "BatchNorm"),
    "BatchNormFunction": ("bncourse.layer", "BatchNormFunction"),
}
_LAZY_MODULES = {
    "layer", "gradcheck", "jacobian", "memory", "analysis", "networks", "invariance",
    "freezing", "training", "exercises", "plotting", "authoring", "bench", "claims",
    "inference", "normalization", "distributed", "ports", "doctor", "why", "wild",
    "mixed_batches",
}

__all__ = ["functional", "BatchNorm", "BatchNormFunction", *sorted(_LAZY_MODULES)]


def __getattr__(name: str) -> Any:
    if name in _LAZY_ATTRIBUTES:
        module, attribute = _LAZY_ATTRIBUTES[name]
        value = getattr(importlib.import_module(module), attribute)
    elif name in _LAZY_MODULES:
        value = importlib.import_module(f"bncourse.{name}")
    else:
        raise AttributeError(f"module 'bncourse' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
