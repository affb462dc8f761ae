"""How many bytes a forward pass keeps for its backward pass, measured with saved-tensor hooks.

Each tensor autograd saves is counted once (by its storage), so a view of a saved tensor
or the same tensor saved by two nodes is not counted twice. Parameters and the input that
the caller holds anyway are still counted: they are what autograd keeps alive.

:func:`block_saved_tensors` runs a small block (Linear or Conv, BN, ReLU in some order) and
says, layer by layer, whether each keeps its input, its output or a new tensor, so that the
cost of BN's saved tensor can be judged in context: free when the layer before BN keeps its
output anyway, one more activation-sized tensor otherwise.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

__all__ = ["SavedTensors", "saved_tensors", "BLOCKS", "LayerRecord", "BlockReport",
           "block_saved_tensors"]


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


# --------------------------------------------------------------------------------------
# Who keeps what inside a block of layers
# --------------------------------------------------------------------------------------

#: The blocks :func:`block_saved_tensors` builds, each a list of layer names in order.
BLOCKS: dict[str, tuple[str, ...]] = {
    "linear-bn-relu": ("linear", "bn", "relu"),
    "conv-bn-relu": ("conv", "bn", "relu"),
    "linear-relu-bn": ("linear", "relu", "bn"),
}


@dataclass
class LayerRecord:
    """What one layer of a block keeps for backward, apart from parameters and per-channel
    vectors.

    ``kept`` lists, per kept tensor, ``"its input"``, ``"its output"`` or ``"a new tensor"``
    (the size of its output but neither its input nor its output: a tensor only its
    backward needs).
    """

    name: str
    kept: list[str] = field(default_factory=list)


@dataclass
class BlockReport:
    """What a block keeps for backward: per layer, and in total (each storage counted once)."""

    block: str
    bn: str
    layers: list[LayerRecord]
    activation_numel: int
    total: SavedTensors

    @property
    def activation_sized(self) -> int:
        """Distinct saved tensors the size of BN's input, over the whole block."""
        return self.total.activation_sized(self.activation_numel)


def _make_layers(block: str, bn: str, in_channels: int, channels: int,
                 dtype: torch.dtype) -> list[tuple[str, torch.nn.Module]]:
    from .layer import BatchNorm

    if block not in BLOCKS:
        raise ValueError(f"unknown block {block!r}; choose one of {', '.join(BLOCKS)}")
    if bn not in ("torch", "bncourse"):
        raise ValueError(f"unknown bn {bn!r}; choose 'torch' (torch's layer) or 'bncourse'")
    conv = block.startswith("conv")
    layers: list[tuple[str, torch.nn.Module]] = []
    for name in BLOCKS[block]:
        if name == "linear":
            layers.append((name, torch.nn.Linear(in_channels, channels, bias=False, dtype=dtype)))
        elif name == "conv":
            layers.append((name, torch.nn.Conv2d(in_channels, channels, 3, padding=1,
                                                 bias=False, dtype=dtype)))
        elif name == "relu":
            layers.append((name, torch.nn.ReLU()))
        elif bn == "bncourse":
            layers.append((name, BatchNorm(channels, dtype=dtype)))
        else:
            cls = torch.nn.BatchNorm2d if conv else torch.nn.BatchNorm1d
            layers.append((name, cls(channels, dtype=dtype)))
    return layers


def block_saved_tensors(
    block: str, bn: str = "torch", batch: int = 16, in_channels: int = 24, channels: int = 32,
    spatial: int = 8, seed: int = 0, dtype: torch.dtype = torch.float32,
) -> BlockReport:
    """Run one training-mode forward of ``block`` and report what its layers keep for backward.

    ``block`` is one of :data:`BLOCKS` (``"linear-bn-relu"``, ``"conv-bn-relu"``,
    ``"linear-relu-bn"``); ``bn`` picks torch's layer or ``bncourse.BatchNorm``. The input has
    ``in_channels`` features (a different size from BN's input, so that the block's own input,
    which the first layer keeps, is not mistaken for an activation of BN's size). Linear and
    convolution layers have no bias (BN's mean subtraction would cancel it).
    """
    torch.manual_seed(seed)
    layers = _make_layers(block, bn, in_channels, channels, dtype)
    shape = (batch, in_channels, spatial, spatial) if block.startswith("conv") else (
        batch, in_channels)
    x = torch.randn(shape, dtype=dtype, requires_grad=True)
    records = []
    h = x
    activation_numel = 0

    def forward_all() -> torch.Tensor:
        nonlocal h, activation_numel
        h = x
        for name, layer in layers:
            if name == "bn":
                activation_numel = h.numel()
            h = layer(h)
        return h

    # Per layer: which tensors of BN's size it keeps, and whether they are its input/output.
    with torch.no_grad():
        forward_all()  # fixes activation_numel
    h = x
    for name, layer in layers:
        inp = h
        kept: list[torch.Tensor] = []

        def pack(t: torch.Tensor, kept: list[torch.Tensor] = kept) -> torch.Tensor:
            kept.append(t)
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = layer(inp)
        record = LayerRecord(name)
        seen: set[int] = set()
        for t in kept:
            ptr = t.untyped_storage().data_ptr()
            if ptr in seen:
                continue
            seen.add(ptr)
            if ptr == inp.untyped_storage().data_ptr():
                record.kept.append("its input")
            elif ptr == out.untyped_storage().data_ptr():
                record.kept.append("its output")
            elif t.numel() == out.numel():
                record.kept.append("a new tensor")
            # else: a parameter or a per-channel vector, small next to the activations
        records.append(record)
        h = out
    total = saved_tensors(forward_all)
    return BlockReport(block, bn, records, activation_numel, total)
