"""Find the common batch-normalization pitfalls in a model: ``diagnose(model, example_input)``.

:func:`diagnose` looks at every BN layer of a model (torch's ``BatchNorm1d/2d/3d``, a
materialized ``LazyBatchNorm*``, ``torch.nn.SyncBatchNorm``, :class:`bncourse.BatchNorm`,
:class:`bncourse.distributed.SyncBatchNorm`: every subclass of torch's ``_BatchNorm``), runs
the example input through the model once to see which module feeds which, and returns a list
of :class:`Finding`. :func:`report` formats them; ``python -m bncourse.doctor
package.module:factory`` prints the report for a model built by ``factory()`` and exits with
status 1 when there are findings, 0 when there are none (2 for a usage error).

The codes (:data:`CODES`) and their exact rules:

* ``bias-before-bn`` (on the Linear or Conv): a ``Linear``, ``Bilinear`` or convolution with a
  bias whose output goes straight into a BN, along the BN's channel axis (axis 1): the BN
  subtracts the per-channel mean, so the bias is cancelled.
* ``frozen-affine-stats-moving`` (on the BN): a BN in training mode whose ``weight`` and
  ``bias`` (those it has) all have ``requires_grad=False``, while it tracks running
  statistics with a momentum that is ``None`` or above 0, so they still move.
* ``keras-momentum`` (on the BN): ``momentum`` above :data:`KERAS_MOMENTUM_LIMIT`
  (``momentum=None``, the cumulative average, is not flagged).
* ``tiny-batch`` (on the BN): a BN that normalizes with batch statistics on the example
  (training mode, or no running statistics) over fewer than :data:`TINY_BATCH_VALUES` values
  per channel, m = N times the spatial size (for a synchronized layer in an initialized
  process group, m times the group's size).
* ``stats-never-estimated`` (on the BN): a BN in eval mode that tracks running statistics
  whose ``num_batches_tracked`` is 0 and whose ``running_mean`` and ``running_var`` still hold
  exactly their initial values 0 and 1. Statistics set by hand (a port from Keras, a
  checkpoint without the counter) leave the counter at 0 but not the values: not flagged.
* ``batch-stats-in-eval`` (on the BN): a BN without running statistics
  (``track_running_stats=False``, or both buffers set to ``None``), in either mode.
* ``dropout-before-bn`` (on the Dropout): a dropout layer with ``p > 0`` (any subclass of
  torch's ``_DropoutNd``, in either mode) whose output goes straight into a BN.
* ``half-precision-stats`` (on the BN): ``running_mean`` or ``running_var`` stored in float16
  or bfloat16.

"Goes straight into" is decided on tensor identity: forward hooks on every module record
which module returned which tensor object, and the BN receives that very object. In between
may stand only modules that return their own input unchanged (``nn.Identity``, a container,
an eval-mode dropout), and, for ``bias-before-bn``, dropout layers. Anything that makes a new
tensor (``torch.flatten``, ``view``, ``reshape``, an activation, an addition) or changes the
tensor in place (``ReLU(inplace=True)``, ``x.add_(1)``) in between breaks the chain, even when
the bias would still be cancelled through it. An operation that returns its input object
(``torch.flatten`` of a tensor that is already flat) is invisible and counts as nothing.

The example runs once under ``torch.no_grad()``, with the global random state (CPU and the
CUDA devices involved) saved and restored, and with each BN layer's ``forward`` replaced for
the run by a stand-in that records the input and normalizes it as the layer would in its mode
(batch statistics in training mode or without running statistics, running statistics
otherwise) without touching any state: a batch of one, or a synchronized layer outside a
process group, does not stop the diagnosis. The model is left exactly as it was found:
parameters and buffers (values, dtypes, the tensor objects themselves), gradients,
``requires_grad`` flags and every module's ``training`` flag are saved before the run and
restored after it, also when the model raises (then :class:`ExampleInputError`). A tensor
changed in place is copied back; one that was not touched is left alone (its version counter
too, so a pending backward still works).

Module names are those of ``model.named_modules()``; a model wrapped in
``DistributedDataParallel`` or ``DataParallel`` is diagnosed through its ``.module`` (one
made by ``torch.compile`` through its eager original), and the names are those of the
unwrapped model (without the wrapper's ``module.`` or ``_orig_mod.`` prefix). A model
that is itself a BN layer has the name ``""``.

What it cannot detect:

* BN computed without a BN module: a functional ``F.batch_norm`` call, or a layer called
  through ``layer.forward(x)`` rather than ``layer(x)`` (no hooks run);
* a bias cancelled through a reshape, a view, a concatenation or any other tensor operation,
  including a ``torch.flatten`` before a ``BatchNorm1d`` on the flattened features (it is
  cancelled there too); a bias added by hand (``F.conv2d(x, w) + b``) before a BN;
* anything in a path the example does not take (a branch under ``if``, a module not called);
  the data-flow codes (``bias-before-bn``, ``dropout-before-bn``, ``tiny-batch``) see only the
  example's run, the others read the layers' attributes and buffers;
* a batch that is tiny in training but not in the example (the last batch of a loader with
  ``drop_last=False``, a 1x1 feature map at a resolution other than the example's);
* non-i.i.d. batches, train/test distribution shift, and running statistics that differ
  across DDP ranks (properties of the data and of the training run, not of the model);
* normalization layers that are not subclasses of torch's ``_BatchNorm`` (a hand-written BN,
  ``FrozenBatchNorm2d``-style layers) and TorchScript modules (refused).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import sys
import textwrap
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd
from torch.nn.modules.dropout import _DropoutNd

__all__ = [
    "CODES",
    "Finding",
    "ExampleInputError",
    "KERAS_MOMENTUM_LIMIT",
    "TINY_BATCH_VALUES",
    "diagnose",
    "report",
    "main",
]

#: A BN normalizing over fewer values per channel than this (m = N times the spatial size)
#: is flagged ``tiny-batch``.
TINY_BATCH_VALUES = 8
#: A BN momentum above this is flagged ``keras-momentum``: PyTorch's momentum is the weight of
#: the new batch, Keras' and Flax's the weight of the old running value (0.99 there is 0.01
#: here), so a value above one half is the sign of a port without conversion.
KERAS_MOMENTUM_LIMIT = 0.5

#: Every code :func:`diagnose` can return, with a one-line description, in report order.
CODES: dict[str, str] = {
    "bias-before-bn": "a Linear or Conv with a bias feeds a BN, which cancels the bias",
    "frozen-affine-stats-moving": (
        "a BN with frozen weight and bias is in training mode: its running statistics still move"
    ),
    "keras-momentum": (
        f"a BN momentum above {KERAS_MOMENTUM_LIMIT}: a Keras or Flax momentum not converted"
    ),
    "tiny-batch": (
        f"a BN normalizes over fewer than {TINY_BATCH_VALUES} values per channel on the example"
    ),
    "stats-never-estimated": "a BN in eval mode whose running statistics were never estimated",
    "batch-stats-in-eval": "a BN without running statistics: its eval output depends on the batch",
    "dropout-before-bn": "a Dropout feeds a BN: the variance shift between training and eval",
    "half-precision-stats": "a BN's running statistics are stored in float16 or bfloat16",
}

_HALF = (torch.float16, torch.bfloat16)
_LINEAR_TYPES = (nn.Linear, nn.Bilinear, _ConvNd)
_WRAPPERS = (nn.parallel.DistributedDataParallel, nn.DataParallel)


@dataclass(frozen=True)
class Finding:
    """One pitfall: its ``code`` (a key of :data:`CODES`), the ``module`` it is about (its
    qualified name in the unwrapped model, ``""`` for the model itself) and a ``message``
    (what is wrong, why it matters, the fix)."""

    code: str
    module: str
    message: str


class ExampleInputError(RuntimeError):
    """The example input failed in the model's forward (the model is restored all the same)."""


def is_batch_norm(module: nn.Module) -> bool:
    """True for every subclass of torch's ``_BatchNorm`` (torch's layers and the course's)."""
    return isinstance(module, _BatchNorm)


def _label(name: str) -> str:
    return f"'{name}'" if name else "the model itself"


# --------------------------------------------------------------------------- state


@dataclass
class _Saved:
    tensor: Tensor
    version: int
    ptr: int
    copy: Tensor


def _save(t: Tensor) -> _Saved:
    return _Saved(t, t._version, t.data_ptr(), t.detach().clone())


def _restore(s: _Saved) -> None:
    t = s.tensor
    changed_object = (t.data_ptr() != s.ptr or t.shape != s.copy.shape
                      or t.dtype != s.copy.dtype or t.device != s.copy.device)
    if changed_object:
        t.data = s.copy
    elif t._version != s.version:
        with torch.no_grad():
            t.copy_(s.copy)


@contextlib.contextmanager
def _preserved(model: nn.Module) -> Iterator[None]:
    """Save everything a forward pass could change in ``model`` and put it back afterwards."""
    modules = list(model.modules())
    dicts = [(m, dict(m._parameters), dict(m._buffers), dict(m._modules), m.training)
             for m in modules]
    tensors: list[_Saved] = []
    grads: list[tuple[nn.Parameter, Tensor | None, _Saved | None, bool]] = []
    for m in modules:
        for p in m._parameters.values():
            if p is None:
                continue
            tensors.append(_save(p))
            grads.append((p, p.grad, None if p.grad is None else _save(p.grad), p.requires_grad))
        for b in m._buffers.values():
            if b is not None:
                tensors.append(_save(b))
    try:
        yield
    finally:
        for m, params, buffers, children, training in dicts:
            for store, saved in ((m._parameters, params), (m._buffers, buffers),
                                 (m._modules, children)):
                if store.keys() != saved.keys() or any(store[k] is not v
                                                       for k, v in saved.items()):
                    store.clear()
                    store.update(saved)
            m.training = training
        for s in tensors:
            _restore(s)
        for p, grad, saved_grad, requires_grad in grads:
            if p.grad is not grad:
                p.grad = grad
            if saved_grad is not None:
                _restore(saved_grad)
            if p.requires_grad != requires_grad:
                p.requires_grad_(requires_grad)


# --------------------------------------------------------------------------- the run


@dataclass
class _Event:
    """A module returned ``out``: its input (first positional tensor) and the versions."""

    name: str
    module: nn.Module
    inp: Tensor | None
    in_place: bool
    version_in: int
    version_out: int


@dataclass
class _BNCall:
    name: str
    module: nn.Module
    x: Tensor
    version: int


def _tensors(value: Any) -> list[Tensor]:
    if isinstance(value, Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [v for v in value if isinstance(v, Tensor)]
    return []


class _Recorder:
    """Forward hooks on every module, and stand-in forwards on every BN layer."""

    def __init__(self) -> None:
        self.events: dict[int, list[_Event]] = {}
        self.keep: list[Tensor] = []  # holds every tensor seen, so that no id is reused
        self.bn_calls: list[_BNCall] = []
        self._pending: dict[int, list[tuple[Tensor | None, int]]] = {}

    def pre_hook(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        first = args[0] if args else next(iter(kwargs.values()), None)
        inp = first if isinstance(first, Tensor) else None
        self._pending.setdefault(id(module), []).append(
            (inp, -1 if inp is None else inp._version))
        if inp is not None:
            self.keep.append(inp)

    def hook(self, name: str) -> Callable[[nn.Module, tuple, Any], None]:
        def record(module: nn.Module, args: tuple, output: Any) -> None:
            stack = self._pending.get(id(module))
            inp, version_in = stack.pop() if stack else (None, -1)
            for out in _tensors(output):
                in_place = out is inp and out._version != version_in
                self.events.setdefault(id(out), []).append(
                    _Event(name, module, inp, in_place, version_in, out._version))
                self.keep.append(out)
        return record

    def stand_in(self, name: str, bn: nn.Module) -> Callable[..., Any]:
        original = bn.forward

        def forward(*args: Any, **kwargs: Any) -> Any:
            x = args[0] if len(args) == 1 and not kwargs else kwargs.get("input")
            fits = (isinstance(x, Tensor) and len(args) + len(kwargs) == 1 and x.dim() >= 2
                    and x.is_floating_point() and x.shape[1] == bn.num_features)
            if not fits:
                return original(*args, **kwargs)  # let the layer raise its own error
            self.bn_calls.append(_BNCall(name, bn, x, x._version))
            self.keep.append(x)
            return _normalize(bn, x)
        return forward


def _normalize(bn: Any, x: Tensor) -> Tensor:
    """What ``bn`` computes in its mode, without updating anything (float32 for half inputs)."""
    compute = torch.float32 if x.dtype in _HALF else x.dtype
    xc = x.to(compute)
    dims = [0, *range(2, x.dim())]
    shape = (1, x.shape[1]) + (1,) * (x.dim() - 2)
    if bn.training or bn.running_mean is None or bn.running_var is None:
        mean = xc.mean(dim=dims)
        var = xc.var(dim=dims, unbiased=False)
    else:
        mean = bn.running_mean.to(compute)
        var = bn.running_var.to(compute)
    tiny = torch.finfo(compute).tiny
    y = (xc - mean.view(shape)) * torch.rsqrt((var + bn.eps).clamp_min(tiny)).view(shape)
    if bn.weight is not None:
        y = y * bn.weight.to(compute).view(shape)
    if bn.bias is not None:
        y = y + bn.bias.to(compute).view(shape)
    return y.to(x.dtype)


def _devices(model: nn.Module, example: Sequence[Tensor]) -> list[int]:
    tensors = [*model.parameters(), *model.buffers(), *example]
    return sorted({t.device.index or 0 for t in tensors if t.device.type == "cuda"})


def _run(model: nn.Module, example: tuple[Tensor, ...]) -> _Recorder:
    """Run ``example`` through ``model`` with hooks; the model is restored afterwards."""
    rec = _Recorder()
    handles = []
    patched: list[tuple[nn.Module, bool, Any]] = []
    with _preserved(model), torch.random.fork_rng(devices=_devices(model, example)):
        try:
            for name, module in model.named_modules():
                handles.append(module.register_forward_pre_hook(rec.pre_hook, with_kwargs=True))
                handles.append(module.register_forward_hook(rec.hook(name)))
                if is_batch_norm(module):
                    had = "forward" in module.__dict__
                    patched.append((module, had, module.__dict__.get("forward")))
                    module.forward = rec.stand_in(name, module)
            with torch.no_grad():
                model(*example)
        except Exception as exc:
            shapes = ", ".join(f"{tuple(t.shape)} {t.dtype}" for t in example)
            raise ExampleInputError(
                f"the example input ({shapes}) failed in the model's forward: "
                f"{type(exc).__name__}: {exc}. The model was left as it was; give an input "
                f"the model accepts"
            ) from exc
        finally:
            for h in handles:
                h.remove()
            for module, had, forward in patched:
                if had:
                    module.forward = forward
                else:
                    del module.__dict__["forward"]
    return rec


# --------------------------------------------------------------------------- data flow


def _has_children(module: nn.Module) -> bool:
    return next(module.children(), None) is not None


def _upstream(rec: _Recorder, t: Tensor, version: int) -> tuple[_Event | None, list[_Event]]:
    """The module that made ``t`` (None when unknown or changed since) and the dropouts between.

    ``version`` is ``t``'s version counter when the consumer received it: a different version
    at the last module that returned ``t`` means something changed it in place in between.
    """
    dropouts: list[_Event] = []
    while True:
        events = rec.events.get(id(t), [])
        if not events or events[-1].version_out != version:
            return None, dropouts
        creator = None
        for i in range(len(events) - 1, -1, -1):
            e = events[i]
            if i > 0 and e.inp is not t and _has_children(e.module):
                continue  # a container returning what one of its modules made
            if e.inp is t and not e.in_place:
                if isinstance(e.module, _DropoutNd):
                    dropouts.append(e)
                continue  # returned its input unchanged
            creator = e
            break
        if creator is None:
            return None, dropouts
        if isinstance(creator.module, _DropoutNd) and creator.inp is not None:
            dropouts.append(creator)
            t, version = creator.inp, creator.version_in
            continue
        return creator, dropouts


def _bias_axis(module: nn.Module, out: Tensor) -> int:
    """The axis of ``out`` along which ``module``'s bias varies."""
    if isinstance(module, _ConvNd):
        return 1 if out.dim() == len(module.kernel_size) + 2 else 0
    return out.dim() - 1


# --------------------------------------------------------------------------- the checks


def _check_example(example_input: Any) -> tuple[Tensor, ...]:
    if isinstance(example_input, Tensor):
        return (example_input,)
    if (isinstance(example_input, (tuple, list)) and example_input
            and all(isinstance(t, Tensor) for t in example_input)):
        return tuple(example_input)
    raise TypeError(
        f"diagnose: example_input must be a torch.Tensor or a non-empty tuple of tensors "
        f"(passed to the model as positional arguments), got {type(example_input).__name__}"
    )


def _unwrap(model: Any) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(f"diagnose: model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(model, torch.jit.ScriptModule):
        raise TypeError("diagnose: a TorchScript module has no forward hooks; diagnose the eager "
                        "model it was scripted or traced from")
    while True:
        if isinstance(model, _WRAPPERS):
            model = model.module
        elif type(model).__name__ == "OptimizedModule" and hasattr(model, "_orig_mod"):
            model = model._orig_mod  # torch.compile's wrapper: run the eager model
        else:
            break
    lazy = [n for n, t in [*model.named_parameters(), *model.named_buffers()]
            if nn.parameter.is_lazy(t)]
    if lazy:
        raise ValueError(
            f"diagnose: the model has lazy modules not yet materialized ({', '.join(lazy[:4])}); "
            f"run one forward pass first, since the example's run would change the model"
        )
    return model


def _world_size(bn: Any) -> int:
    if not hasattr(bn, "process_group"):
        return 1
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size(bn.process_group)


def _static_findings(name: str, bn: Any) -> list[Finding]:
    found = []
    label = _label(name)
    tracks = bn.running_mean is not None and bn.running_var is not None
    m = bn.momentum
    affine = [p for p in (bn.weight, bn.bias) if p is not None]
    if (bn.training and tracks and affine and not any(p.requires_grad for p in affine)
            and (m is None or m > 0)):
        found.append(Finding("frozen-affine-stats-moving", name, (
            f"BN {label} has weight and bias with requires_grad=False (frozen) but is in "
            f"training mode, so every forward pass still moves its running_mean and running_var "
            f"(momentum {m}): requires_grad=False stops the optimizer, only eval mode stops the "
            f"running statistics, and the frozen layer drifts away from the statistics its "
            f"weights were trained with (chapter 3). Fix: put the layer in eval mode too, and "
            f"keep it there after model.train() (bncourse.freezing.freeze_batch_norm does both).")))
    if m is not None and m > KERAS_MOMENTUM_LIMIT:
        found.append(Finding("keras-momentum", name, (
            f"BN {label} has momentum={m:g}, above {KERAS_MOMENTUM_LIMIT}. In PyTorch momentum is "
            f"the weight of the new batch (running = (1 - momentum) * running + momentum * "
            f"batch); in Keras and Flax it is the weight of the old value, so Keras' 0.99 is "
            f"PyTorch's 0.01. With {m:g} the running statistics are mostly the last batch's, "
            f"the sign of a value ported without conversion (chapter 7). Fix: "
            f"momentum={1 - m:.6g} (one minus the ported value).")))
    if not tracks:
        found.append(Finding("batch-stats-in-eval", name, (
            f"BN {label} keeps no running statistics (track_running_stats=False), so in eval "
            f"mode too it normalizes with the statistics of the batch it is given: a test "
            f"prediction depends on the other examples of the test batch, and a batch of one "
            f"vector fails (chapter 5). Fix: track_running_stats=True and train (or re-estimate) "
            f"the running statistics, or a normalization that does not use the batch "
            f"(GroupNorm, LayerNorm).")))
    elif not bn.training:
        counter = bn.num_batches_tracked
        never = counter is None or int(counter) == 0
        if (never and bool((bn.running_mean == 0).all())
                and bool((bn.running_var == 1).all())):
            found.append(Finding("stats-never-estimated", name, (
                f"BN {label} is in eval mode with running statistics that were never estimated "
                f"(num_batches_tracked is 0, running_mean is all 0 and running_var all 1), so it "
                f"normalizes with mean 0 and variance 1 instead of the data's (chapter 5). Fix: "
                f"run training-mode forward passes over training data first "
                f"(bncourse.freezing.reestimate_running_stats), or load trained statistics.")))
    half = sorted({str(b.dtype).removeprefix("torch.") for b in (bn.running_mean, bn.running_var)
                   if b is not None and b.dtype in _HALF})
    if half:
        found.append(Finding("half-precision-stats", name, (
            f"BN {label} stores its running statistics in {' and '.join(half)}: the moving "
            f"average rounds to about 3 significant digits (float16) or 2 (bfloat16) at every "
            f"update, so updates smaller than half a unit in the last place are lost and the "
            f"statistics stall or drift, and float16 overflows above 65504 (chapter 9). Fix: "
            f"keep BN layers in float32 (autocast and mixed-precision wrappers do: the layer "
            f"takes a half-precision input with float32 parameters and buffers).")))
    return found


def _flow_findings(rec: _Recorder) -> list[Finding]:
    biased: dict[str, tuple[nn.Module, list[str]]] = {}
    dropped: dict[str, tuple[nn.Module, list[str]]] = {}
    smallest: dict[str, tuple[Any, int, tuple[int, ...]]] = {}
    for call in rec.bn_calls:
        bn_name = call.name
        creator, dropouts = _upstream(rec, call.x, call.version)
        if creator is not None and isinstance(creator.module, _LINEAR_TYPES):
            bias = getattr(creator.module, "bias", None)
            if bias is not None and _bias_axis(creator.module, call.x) == 1:
                entry = biased.setdefault(creator.name, (creator.module, []))
                if bn_name not in entry[1]:
                    entry[1].append(bn_name)
        for e in dropouts:
            if e.module.p > 0:
                entry = dropped.setdefault(e.name, (e.module, []))
                if bn_name not in entry[1]:
                    entry[1].append(bn_name)
        bn = call.module
        if bn.training or bn.running_mean is None or bn.running_var is None:
            m = call.x.numel() // call.x.shape[1] * _world_size(bn)
            if bn_name not in smallest or m < smallest[bn_name][1]:
                smallest[bn_name] = (bn, m, tuple(call.x.shape))
    found = []
    for name, (module, bns) in biased.items():
        targets = ", ".join(_label(b) for b in bns)
        found.append(Finding("bias-before-bn", name, (
            f"{type(module).__name__} {_label(name)} has a bias and its output goes straight "
            f"into BN {targets}. The BN subtracts each channel's mean, which removes any "
            f"constant added per channel: the bias is cancelled, gets a zero gradient in "
            f"training mode, and only adds parameters (chapter 1). Fix: build the layer with "
            f"bias=False; the BN's beta is the shift.")))
    for name, (module, bns) in dropped.items():
        targets = ", ".join(_label(b) for b in bns)
        found.append(Finding("dropout-before-bn", name, (
            f"{type(module).__name__} {_label(name)} (p={module.p:g}) feeds BN {targets} "
            f"directly. In training dropout zeroes values and scales the rest by 1/(1 - p), in "
            f"eval it does nothing, so the variance the BN sees differs between the two: the "
            f"running variance estimated in training does not fit the eval-mode input (the "
            f"variance shift, Li et al. 2019; chapter 9). Fix: move dropout after the last BN "
            f"(before the classifier), or, after training, re-estimate the BN's running "
            f"statistics with dropout in eval mode.")))
    for name, (bn, m, shape) in smallest.items():
        if m >= TINY_BATCH_VALUES:
            continue
        mode = "training mode" if bn.training else "eval mode without running statistics"
        world = _world_size(bn)
        over = f" over {world} processes" if world > 1 else ""
        found.append(Finding("tiny-batch", name, (
            f"BN {_label(name)} ({mode}) normalizes each channel over m = {m} values{over} on the "
            f"example (input shape {shape}: m is the batch size times the spatial size), fewer "
            f"than {TINY_BATCH_VALUES}. With so few values the batch mean and variance are "
            f"noisy, each example's output depends strongly on its batch-mates, and m = 1 is an "
            f"error in training (chapter 9). Fix: a larger batch, SyncBatchNorm across "
            f"processes, a normalization that does not use the batch (GroupNorm, LayerNorm), "
            f"or eval mode for the BN with trained running statistics.")))
    return found


def diagnose(model: nn.Module, example_input: Tensor | Sequence[Tensor]) -> list[Finding]:
    """The BN pitfalls of ``model``, found by its attributes and one run of ``example_input``.

    ``example_input`` is a tensor or a tuple of tensors (the model's positional arguments).
    Findings come in the order of ``model.named_modules()``, and for one module in the order
    of :data:`CODES`; the module's docstring gives each code's rule and what it cannot
    detect. The model is left exactly as found; :class:`ExampleInputError` if the model's
    forward raises on the example.
    """
    example = _check_example(example_input)
    inner = _unwrap(model)
    rec = _run(inner, example)
    found = _flow_findings(rec)
    for name, module in inner.named_modules():
        if is_batch_norm(module):
            found.extend(_static_findings(name, module))
    order = {n: i for i, (n, _) in enumerate(inner.named_modules())}
    codes = list(CODES)
    return sorted(found, key=lambda f: (order.get(f.module, len(order)), codes.index(f.code)))


def report(findings: Sequence[Finding], width: int | None = 88) -> str:
    """The findings as text: a count, then one paragraph per finding, ``[code] module: message``.

    Each paragraph is wrapped at ``width`` characters (continuation lines indented by two
    spaces), so that it reads in a terminal or a notebook's output; ``None`` keeps one line
    per finding.
    """
    if not findings:
        return "bncourse.doctor: no findings."
    paragraphs = [f"bncourse.doctor: {len(findings)} finding(s)."]
    for f in findings:
        text = f"[{f.code}] {f.module or '(the model itself)'}: {f.message}"
        if width is not None:
            text = textwrap.fill(text, width=width, subsequent_indent="  ",
                                 break_long_words=False, break_on_hyphens=False)
        paragraphs.append(text)
    return "\n\n".join(paragraphs)


# --------------------------------------------------------------------------- command line


def _load(spec: str) -> Callable[[], Any]:
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(f"expected module:factory (such as mypackage.models:build), got {spec!r}")
    module = importlib.import_module(module_name)
    try:
        return getattr(module, attribute)
    except AttributeError:
        raise ValueError(f"module {module_name!r} has no attribute {attribute!r}") from None


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bncourse.doctor module:factory [--shape N,C,...]``: print the report.

    ``factory()`` returns a model, or a ``(model, example_input)`` pair; with a model alone,
    ``--shape`` gives the example (standard normal values, float32, seed ``--seed``). Exit
    status: 0 without findings, 1 with findings, 2 for a usage error.
    """
    parser = argparse.ArgumentParser(
        prog="python -m bncourse.doctor",
        description="Find batch-normalization pitfalls in a model. Exit status: 0 no finding, "
                    "1 findings, 2 usage error.",
    )
    parser.add_argument("factory", help="module:factory, a function returning a model or a "
                                        "(model, example_input) pair")
    parser.add_argument("--shape", help="the example input's shape, such as 32,3,32,32 "
                                        "(needed when the factory returns a model alone)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the example input")
    args = parser.parse_args(argv)
    try:
        built = _load(args.factory)()
        if isinstance(built, tuple) and len(built) == 2 and isinstance(built[0], nn.Module):
            model, example = built
        else:
            model = built
            if args.shape is None:
                raise ValueError("the factory returned a model alone: give --shape N,C,...")
            shape = tuple(int(s) for s in args.shape.split(","))
            g = torch.Generator().manual_seed(args.seed)
            example = torch.randn(shape, generator=g)
        findings = diagnose(model, example)
    except (ValueError, TypeError, ImportError, ExampleInputError) as exc:
        parser.exit(2, f"python -m bncourse.doctor: error: {exc}\n")
    print(report(findings))
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
