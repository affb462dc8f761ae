"""How many bytes a forward pass keeps for its backward pass, measured with saved-tensor hooks.

Each tensor autograd saves is counted once (by its storage), so a view of a saved tensor
or the same tensor saved by two nodes is not counted twice. Parameters and the input that
the caller holds anyway are still counted: they are what autograd keeps alive.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

__all__ = ["SavedTensors", "saved_tensors"]


@dataclass
class SavedTensors:
    """The tensors saved for backward: their count, total bytes and shapes."""

    shapes: list[tuple[int, ...]] = field(default_factory=list)
    nbytes: int = 0

    @property
    def count(self) -> int:
        return len(self.shapes)

    def activation_sized(self, numel: int) -> int:
        """How many saved tensors have ``numel`` elements (the size of the activation)."""
        return sum(1 for s in self.shapes if _numel(s) == numel)


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def saved_tensors(fn: Callable[[], torch.Tensor]) -> SavedTensors:
    """Run ``fn()`` (a forward pass) and report what autograd saved for its backward."""
    seen: set[tuple[int, int]] = set()
    report = SavedTensors()

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        key = (storage.data_ptr(), storage.nbytes())
        if key not in seen:
            seen.add(key)
            report.shapes.append(tuple(t.shape))
            report.nbytes += storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return report
