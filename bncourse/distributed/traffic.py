r"""What synchronized BN sends and receives per training step, and ResNet-50's numbers.

One process *contributes* 4 values per channel and step (a mean and an $M_2$ forward, the
sums of $dy$ and $dy\,\hat{x}$ backward); what it *receives* grows with the number of
processes $P$: the ``all_gather`` delivers the $2C$ values of each of the other $P - 1$
processes, a ring all-reduce about $2(P-1)/P$ times its data.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["RESNET50_BN_CHANNELS", "resnet50_bn_channels", "resnet50_parameter_count",
           "sync_values_per_step", "sync_bytes_per_step", "ring_allreduce_bytes_received",
           "sync_bytes_received_per_step", "ddp_buffer_bytes_per_step"]


def resnet50_bn_channels() -> list[int]:
    """The channel count of every BN layer of ResNet-50, in order (He et al. 2016).

    A stem BN of 64 channels, then 16 bottleneck blocks in four stages of 3, 4, 6 and 3
    blocks with widths 64, 128, 256 and 512: each block has BNs of width, width and
    4 * width channels, and the first block of each stage one more BN of 4 * width on its
    projection shortcut.
    """
    channels = [64]
    for blocks, width in ((3, 64), (4, 128), (6, 256), (3, 512)):
        for block in range(blocks):
            channels += [width, width, 4 * width]
            if block == 0:
                channels.append(4 * width)
    return channels


def resnet50_parameter_count() -> int:
    """The number of parameters of ResNet-50 (1000 classes), counted from its architecture.

    Convolutions without bias (7x7 stem; 1x1, 3x3, 1x1 in each bottleneck; 1x1 projection
    shortcuts), two parameters per BN channel, and the final 2048 -> 1000 linear layer.
    """
    total = 3 * 64 * 7 * 7 + 2 * 64
    cin = 64
    for blocks, width in ((3, 64), (4, 128), (6, 256), (3, 512)):
        for block in range(blocks):
            total += cin * width + width * width * 9 + width * 4 * width
            total += 2 * (width + width + 4 * width)
            if block == 0:
                total += cin * 4 * width + 2 * 4 * width
            cin = 4 * width
    return total + 2048 * 1000 + 1000


#: BN channel counts of ResNet-50, stem first.
RESNET50_BN_CHANNELS: tuple[int, ...] = tuple(resnet50_bn_channels())


def sync_values_per_step(channels: int) -> int:
    """Values one process contributes per training step to one SyncBN layer of C channels.

    Forward: the local mean and M2 of every channel (2C); backward: the local sums of dy and
    dy * x_hat of every channel (2C). The two integers of the agreement check (channels and
    count) are not counted.
    """
    if not isinstance(channels, int) or channels < 1:
        raise ValueError(f"channels must be a positive integer; got {channels!r}")
    return 4 * channels


def sync_bytes_per_step(channels: int | Sequence[int], itemsize: int = 4) -> int:
    """Bytes one process contributes per step to SyncBN layers of these channel counts."""
    if isinstance(channels, int):
        channels = [channels]
    return sum(sync_values_per_step(c) for c in channels) * itemsize


def ring_allreduce_bytes_received(values: int, processes: int, itemsize: int = 4) -> float:
    """Bytes one process receives in a ring all-reduce of ``values`` values over ``processes``.

    A ring all-reduce is a reduce-scatter then an all-gather, each of ``processes - 1``
    rounds in which every process receives one of ``processes`` equal chunks: in all
    ``2 (P - 1) / P`` times the data. (It sends as much as it receives.)
    """
    if not isinstance(processes, int) or processes < 1:
        raise ValueError(f"processes must be a positive integer; got {processes!r}")
    return 2 * (processes - 1) / processes * values * itemsize


def sync_bytes_received_per_step(channels: int | Sequence[int], processes: int,
                                 itemsize: int = 4) -> float:
    """Bytes one process receives per step from SyncBN layers of these channel counts.

    Forward: the ``all_gather`` delivers the mean and M2 (2C values) of each of the other
    ``processes - 1`` processes; backward: a ring all-reduce of the 2C sums. The small
    agreement check is not counted.
    """
    if isinstance(channels, int):
        channels = [channels]
    if not isinstance(processes, int) or processes < 1:
        raise ValueError(f"processes must be a positive integer; got {processes!r}")
    total = 0.0
    for c in channels:
        half = sync_values_per_step(c) // 2  # 2C values forward, 2C backward
        total += (processes - 1) * half * itemsize
        total += ring_allreduce_bytes_received(half, processes, itemsize)
    return total


def ddp_buffer_bytes_per_step(channels: int | Sequence[int], itemsize: int = 4,
                              counter_bytes: int = 8) -> int:
    """Bytes of BN buffers that ``DistributedDataParallel`` broadcasts from rank 0 per step.

    With its default ``broadcast_buffers=True`` DDP sends every buffer of the model from rank
    0 to the others at each training-mode forward: per BN layer the running mean and the
    running variance (C values each) and ``num_batches_tracked`` (one int64). Every model
    with BN layers pays it, synchronized or not; under SyncBatchNorm the running statistics
    are already equal on every process, so ``broadcast_buffers=False`` would save it.
    """
    if isinstance(channels, int):
        channels = [channels]
    return sum(2 * c * itemsize + counter_bytes for c in channels)
