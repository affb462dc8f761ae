r"""Porting a BN layer between PyTorch, Keras 3 and Flax NNX, checked against the libraries.

The same layer, three sets of conventions (chapter 7 asserts each against the library):

* **momentum**: PyTorch's ``momentum`` $\alpha$ weights the *new* batch,
  $\hat\mu \leftarrow (1-\alpha)\hat\mu + \alpha\mu_B$ (default 0.1); Keras' and Flax's
  ``momentum`` $\rho$ weights the *old* value (default 0.99). The port is $\rho = 1 - \alpha$.
  PyTorch's ``momentum=None`` (the cumulative average) has no counterpart in either.
* **epsilon**: PyTorch 1e-5, Keras 1e-3, Flax 1e-5; copied as it is.
* **the stored variance**: PyTorch's ``running_var`` takes the *unbiased* batch variance,
  Keras 3's ``moving_variance`` and Flax's ``var`` the *biased* one. All three normalize with
  the biased one. A ported layer therefore gives the same outputs, but after a training step
  its variance has moved by $(1-\rho)\,v_B$ where PyTorch's moved by
  $\alpha\,\frac{m}{m-1} v_B$: no setting of either library stores the unbiased one.
* **the variance formula**: PyTorch's is stable (two passes on CPU, Welford's update on CUDA);
  Keras 3 (torch backend, unmasked call) and Flax by default compute $E[x^2] - E[x]^2$, whose
  relative error in float32 grows like $u\,(\bar x/\sigma)^2$: every digit is lost when the
  mean is some $10^4$ times the spread (Keras' can even go negative). :func:`to_flax` asks
  Flax for two passes; Keras has no documented option, though its masked path (``mask=`` in
  the call) takes two passes.
* **the channel axis**: PyTorch's is axis 1; Keras' and Flax's default is the last axis.
  The layers made here use axis 1, so they take PyTorch's layout.

:func:`to_keras` and :func:`from_keras`, :func:`to_flax` and :func:`from_flax` convert a
layer; :func:`torch_model_to_keras` and :func:`torch_model_to_flax` a small
conv-BN-ReLU network. What does not port raises a ``ValueError`` that says why.

Keras runs on its torch backend: this module sets ``KERAS_BACKEND=torch`` before it imports
keras (lazily, on first use), and refuses to work with a keras already imported on another
backend. Keras and JAX/Flax are imported only when a function needs them.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .layer import BatchNorm

__all__ = [
    "complement",
    "keras",
    "nnx",
    "to_keras",
    "from_keras",
    "to_flax",
    "from_flax",
    "torch_model_to_keras",
    "torch_model_to_flax",
    "sync_batch_norm_worker",
    "flax_sync_batch_norm",
    "flax_sync_collectives",
    "written_sync_collectives",
]

#: The number of dimensions of the input that each of torch's classes fixes.
_CLASS_NDIM = {nn.BatchNorm1d: 2, nn.BatchNorm2d: 4, nn.BatchNorm3d: 5}
_DTYPES = {torch.float32: "float32", torch.float64: "float64"}
_CUMULATIVE = (
    "momentum=None (PyTorch's cumulative average of all batches seen) has no counterpart in "
    "Keras or Flax, whose moving average always keeps a fixed share of the old value; give "
    "the layer a momentum first (PyTorch 0.1 is Keras' and Flax's 0.9)"
)


def complement(momentum: float) -> float:
    """``1 - momentum``, the other library's momentum, as the shortest decimal when that is
    within one rounding of it (so 0.1 and 0.9, 0.01 and 0.99 map to each other exactly, and
    a port and its way back give the momentum one started with)."""
    if not 0.0 <= float(momentum) <= 1.0:
        raise ValueError(f"a momentum must lie in [0, 1]; got {momentum}")
    exact = 1.0 - float(momentum)
    short = float(f"{exact:.15g}")
    return short if abs(short - exact) <= 2.0**-53 else exact


def keras() -> Any:
    """The ``keras`` module on the torch backend (imported on first use)."""
    if "keras" not in sys.modules:
        os.environ["KERAS_BACKEND"] = "torch"
    import keras as _keras

    backend = _keras.backend.backend()
    if backend != "torch":
        raise RuntimeError(
            f"keras was imported on the {backend!r} backend before bncourse.ports; the ports "
            f"run Keras on the torch backend: set KERAS_BACKEND=torch before anything imports "
            f"keras (or import bncourse.ports first)"
        )
    return _keras


def nnx() -> Any:
    """``flax.nnx`` (imported on first use)."""
    from flax import nnx as _nnx

    return _nnx


def _torch_layer_facts(bn: nn.Module) -> tuple[int, float, float, bool, torch.dtype]:
    """``(C, momentum, eps, affine, dtype)`` of a torch BN layer, or the reason it cannot port."""
    if not isinstance(bn, _BatchNorm):
        raise TypeError(f"expected a torch BatchNorm layer (BatchNorm1d/2d/3d, SyncBatchNorm or "
                        f"bncourse.BatchNorm); got {type(bn).__name__}")
    if bn.momentum is None:
        raise ValueError(_CUMULATIVE)
    if not bn.track_running_stats or bn.running_mean is None:
        raise ValueError(
            "a layer without running statistics (track_running_stats=False) normalizes with "
            "the batch's statistics in eval mode too; Keras' and Flax's layers always keep "
            "moving statistics and use them at inference, so its meaning does not port")
    dtype = bn.running_mean.dtype
    if dtype not in _DTYPES:
        raise ValueError(f"only float32 and float64 layers port; this one is {dtype}")
    return bn.num_features, float(bn.momentum), float(bn.eps), bool(bn.affine), dtype


def _ndim_for(bn: nn.Module, ndim: int | None) -> int:
    fixed = next((n for cls, n in _CLASS_NDIM.items() if type(bn) is cls), None)
    if ndim is None:
        if fixed is None:
            raise ValueError(
                f"{type(bn).__name__} does not fix the number of input dimensions: pass ndim "
                f"(2 for (N, C), 3 for (N, C, L), 4 for (N, C, H, W), 5 for (N, C, D, H, W))")
        return fixed
    if not isinstance(ndim, int) or not 2 <= ndim <= 5:
        raise ValueError(f"ndim must be an integer from 2 to 5; got {ndim!r}")
    if type(bn) is nn.BatchNorm1d and ndim not in (2, 3):
        raise ValueError(f"BatchNorm1d takes 2-D or 3-D inputs; got ndim={ndim}")
    if fixed is not None and type(bn) is not nn.BatchNorm1d and ndim != fixed:
        raise ValueError(f"{type(bn).__name__} takes {fixed}-D inputs; got ndim={ndim}")
    return ndim


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy().copy()


def to_keras(bn: nn.Module, ndim: int | None = None) -> Any:
    """A built ``keras.layers.BatchNormalization`` equal to the torch layer ``bn``.

    For inputs of ``ndim`` dimensions with channels on axis 1 (PyTorch's layout): momentum
    $\\rho = 1 - \\alpha$, the same epsilon, and $\\gamma$, $\\beta$, the running mean and
    running variance copied bit for bit (``affine=False`` becomes ``center=scale=False``);
    float32 only (a float64 layer is refused: Keras computes it in float32).
    ``ndim`` defaults to 2, 4 and 5 for ``BatchNorm1d``, ``2d`` and ``3d`` and is required
    for ``bncourse.BatchNorm`` and ``SyncBatchNorm``. The outputs in both modes equal the torch
    layer's; after a training step the moving variance differs (Keras stores the biased batch
    variance: see the module's docstring). ``num_batches_tracked`` has no Keras counterpart.

    In training mode Keras 3 on the torch backend computes the batch variance in one pass,
    $E[x^2] - E[x]^2$ in float32, not clamped at 0: for activations whose mean is large
    against their spread (a mean of $10^3$ spreads of 1 already costs about a tenth of the
    variance) the port normalizes with a wrong, possibly negative variance, and no Keras
    setting avoids it. Centre such activations before porting.
    """
    channels, momentum, eps, affine, dtype = _torch_layer_facts(bn)
    ndim = _ndim_for(bn, ndim)
    if dtype != torch.float32:
        raise ValueError(
            "a float64 layer does not port to Keras with its precision: Keras 3's "
            "BatchNormalization on the torch backend rounds its input to float32 even under a "
            "float64 dtype policy (tests/test_ports.py measures it); port float32 layers")
    k = keras()
    layer = k.layers.BatchNormalization(axis=1, momentum=complement(momentum), epsilon=eps,
                                        center=affine, scale=affine, dtype=_DTYPES[dtype])
    layer.build((None, channels, *([None] * (ndim - 2))))
    layer.moving_mean.assign(_numpy(bn.running_mean))
    layer.moving_variance.assign(_numpy(bn.running_var))
    if affine:
        layer.gamma.assign(_numpy(bn.weight))
        layer.beta.assign(_numpy(bn.bias))
    return layer


def _keras_numpy(variable: Any) -> np.ndarray:
    value = variable.value
    return value.detach().cpu().numpy().copy() if isinstance(value, torch.Tensor) else (
        np.asarray(value).copy())


def _channel_axis(axis: Any, ndim: int | None, library: str) -> None:
    """Accept axis 1 or the last axis (channels last): the per-channel state is the same."""
    axes = list(axis) if isinstance(axis, (list, tuple)) else [axis]
    if len(axes) != 1:
        raise ValueError(
            f"the {library} layer normalizes per entry of the axes {axes}: a PyTorch BN layer "
            f"has one channel axis, so it does not port")
    a = int(axes[0])
    if ndim is not None and a < 0:
        a += ndim
    if a == 1 or a == -1 or (ndim is not None and a == ndim - 1):
        return
    raise ValueError(
        f"the {library} layer's channel axis is {axes[0]}"
        + (f" of {ndim}-D inputs" if ndim is not None else "")
        + ": PyTorch's layer takes channels on axis 1, and only a layer over axis 1 or the last "
          "axis (channels last: move it to axis 1) has the same meaning")


def from_keras(layer: Any) -> BatchNorm:
    """A :class:`bncourse.BatchNorm` equal to the built Keras 3 layer ``layer``.

    Momentum $\\alpha = 1 - \\rho$, the same epsilon, and the four tensors copied bit for bit.
    A layer over axis 1 takes the same input; a layer over the last axis (Keras' default,
    channels last) the same input with that axis moved to axis 1. Refused, with the reason:
    an unbuilt layer, ``renorm``, ``synchronized``, ``center`` without ``scale`` (or the
    reverse), regularizers or constraints on $\\gamma$/$\\beta$, another axis, other dtypes.
    """
    k = keras()
    if not isinstance(layer, k.layers.BatchNormalization):
        raise TypeError(f"expected keras.layers.BatchNormalization; got {type(layer).__name__}")
    if not layer.built:
        raise ValueError("the Keras layer is not built yet: call it on a batch or build(shape)")
    if layer.renorm:
        raise ValueError(
            "renorm=True (batch renormalization) corrects the batch statistics towards the moving "
            "ones with clipped factors r and d; PyTorch's BN has no such correction")
    if layer.synchronized:
        raise ValueError(
            "synchronized=True reduces the statistics across devices; the port is a single-"
            "process layer (for several processes use bncourse.distributed.convert_sync_"
            "batchnorm on the result of porting the unsynchronized layer)")
    if layer.center != layer.scale:
        raise ValueError(
            f"center={layer.center}, scale={layer.scale}: a PyTorch BN layer has both gamma and "
            f"beta (affine=True) or neither (affine=False)")
    for name in ("gamma_regularizer", "beta_regularizer", "gamma_constraint", "beta_constraint"):
        if getattr(layer, name, None) is not None:
            raise ValueError(f"{name} is set: it acts during Keras' training and PyTorch's layer "
                             f"has no such setting (add it to the loss or the optimizer)")
    spec = layer.input_spec
    ndim = getattr(spec, "ndim", None) if spec is not None else None
    _channel_axis(layer.axis, ndim, "Keras")
    dtypes = {"float32": torch.float32, "float64": torch.float64}
    if layer.variable_dtype not in dtypes:
        raise ValueError(f"only float32 and float64 layers port; this one is "
                         f"{layer.variable_dtype}")
    mean = _keras_numpy(layer.moving_mean)
    out = BatchNorm(mean.shape[0], eps=float(layer.epsilon), momentum=complement(layer.momentum),
                    affine=bool(layer.scale), dtype=dtypes[layer.variable_dtype])
    with torch.no_grad():
        out.running_mean.copy_(torch.from_numpy(mean))
        out.running_var.copy_(torch.from_numpy(_keras_numpy(layer.moving_variance)))
        if layer.scale:
            out.weight.copy_(torch.from_numpy(_keras_numpy(layer.gamma)))
            out.bias.copy_(torch.from_numpy(_keras_numpy(layer.beta)))
    return out


def _jax_dtype(dtype: torch.dtype) -> Any:
    import jax
    import jax.numpy as jnp

    if dtype == torch.float64 and not jax.config.jax_enable_x64:
        raise ValueError("a float64 layer needs JAX's 64-bit mode: "
                         "jax.config.update('jax_enable_x64', True) before porting")
    return jnp.float64 if dtype == torch.float64 else jnp.float32


def to_flax(bn: nn.Module, *, fast_variance: bool = False, channels_last: bool = False) -> Any:
    """A ``flax.nnx.BatchNorm`` equal to the torch layer ``bn``.

    Feature axis 1 (``channels_last=True``: the last axis), momentum $\\rho = 1 - \\alpha$,
    the same epsilon, the state copied bit for bit, ``use_running_average`` set from the
    torch layer's mode. The variance is the two-pass $E[(x - \\mu_B)^2]$ like PyTorch's:
    Flax's default, ``use_fast_variance=True``, computes $E[x^2] - E[x]^2$, which loses every
    digit for activations whose mean is large against their spread (``fast_variance=True``
    asks for it anyway). As with Keras, the stored variance after a training step is the biased one.
    """
    channels, momentum, eps, affine, dtype = _torch_layer_facts(bn)
    jdtype = _jax_dtype(dtype)
    f = nnx()
    import jax.numpy as jnp

    module = f.BatchNorm(channels, axis=-1 if channels_last else 1, momentum=complement(momentum),
                         epsilon=eps, use_scale=affine, use_bias=affine,
                         use_fast_variance=fast_variance, use_running_average=not bn.training,
                         param_dtype=jdtype, rngs=f.Rngs(0))
    module.mean[...] = jnp.asarray(_numpy(bn.running_mean))
    module.var[...] = jnp.asarray(_numpy(bn.running_var))
    if affine:
        module.scale[...] = jnp.asarray(_numpy(bn.weight))
        module.bias[...] = jnp.asarray(_numpy(bn.bias))
    return module


def from_flax(module: Any) -> BatchNorm:
    """A :class:`bncourse.BatchNorm` equal to the ``flax.nnx.BatchNorm`` ``module``.

    Momentum $\\alpha = 1 - \\rho$, the same epsilon, the state copied bit for bit, and the
    mode from ``use_running_average``. The result computes the two-pass variance; a module
    with ``use_fast_variance=True`` differs from it only where the one-pass formula lost
    precision. Refused, with the reason: ``axis_name`` (synchronized across devices),
    ``use_scale`` without ``use_bias`` (or the reverse), several feature axes or another axis,
    a compute ``dtype`` other than the parameters', other dtypes.
    """
    f = nnx()
    if not isinstance(module, f.BatchNorm):
        raise TypeError(f"expected flax.nnx.BatchNorm; got {type(module).__name__}")
    if module.axis_name is not None:
        raise ValueError(
            f"axis_name={module.axis_name!r}: the module averages its statistics across "
            f"devices; the port is a single-process layer (for several processes use "
            f"bncourse.distributed.convert_sync_batchnorm on the port of the unsynchronized "
            f"module)")
    if module.use_scale != module.use_bias:
        raise ValueError(
            f"use_scale={module.use_scale}, use_bias={module.use_bias}: a PyTorch BN layer has "
            f"both gamma and beta (affine=True) or neither (affine=False)")
    _channel_axis(module.axis, None, "Flax")
    mean = np.asarray(module.mean[...])
    dtypes = {np.dtype("float32"): torch.float32, np.dtype("float64"): torch.float64}
    if mean.dtype not in dtypes:
        raise ValueError(f"only float32 and float64 modules port; this one is {mean.dtype}")
    if module.dtype is not None and np.dtype(module.dtype) != mean.dtype:
        raise ValueError(f"the module computes in {np.dtype(module.dtype)} with {mean.dtype} "
                         f"parameters; PyTorch's layer computes in its parameters' dtype")
    out = BatchNorm(module.num_features, eps=float(module.epsilon),
                    momentum=complement(module.momentum), affine=bool(module.use_scale),
                    dtype=dtypes[mean.dtype])
    with torch.no_grad():
        out.running_mean.copy_(torch.from_numpy(mean.copy()))
        out.running_var.copy_(torch.from_numpy(np.asarray(module.var[...]).copy()))
        if module.use_scale:
            out.weight.copy_(torch.from_numpy(np.asarray(module.scale[...]).copy()))
            out.bias.copy_(torch.from_numpy(np.asarray(module.bias[...]).copy()))
    out.train(not bool(module.use_running_average))
    return out


# --------------------------------------------------------------------------------------
# A whole small network: Conv2d, BatchNorm2d, ReLU, Flatten, Linear
# --------------------------------------------------------------------------------------

def _conv_facts(conv: nn.Conv2d) -> tuple[tuple[int, int], tuple[int, int]]:
    if conv.groups != 1 or conv.dilation != (1, 1) or conv.padding_mode != "zeros":
        raise ValueError("only Conv2d with groups=1, dilation=1 and zero padding ports here")
    if isinstance(conv.padding, str):
        raise ValueError("give Conv2d's padding as numbers, not as a string")
    return tuple(conv.stride), tuple(conv.padding)


def _model_layers(model: nn.Module) -> list[nn.Module]:
    if not isinstance(model, nn.Sequential):
        raise TypeError(f"expected an nn.Sequential; got {type(model).__name__}")
    allowed = (nn.Conv2d, _BatchNorm, nn.ReLU, nn.Flatten, nn.Linear)
    for layer in model:
        if not isinstance(layer, allowed):
            raise ValueError(f"{type(layer).__name__} does not port here: the layers that do "
                             f"are Conv2d, BatchNorm2d (or bncourse.BatchNorm), ReLU, Flatten "
                             f"and Linear")
        if isinstance(layer, nn.Flatten) and (layer.start_dim, layer.end_dim) != (1, -1):
            raise ValueError("only Flatten(start_dim=1, end_dim=-1) ports here")
    return list(model)


def torch_model_to_keras(model: nn.Sequential) -> Any:
    """The ``keras.Sequential`` equal to a torch ``nn.Sequential`` of Conv2d, BatchNorm2d,
    ReLU, Flatten and Linear (channels first, as in torch).

    Convolutions become ``Conv2D(data_format="channels_first")`` after a ``ZeroPadding2D``
    (kernel $(O, I, k_h, k_w) \\to (k_h, k_w, I, O)$), BN layers :func:`to_keras` (4-D),
    linear layers ``Dense`` (kernel transposed). Call it with ``training=True`` for
    training mode, as the torch model in ``train()``.
    """
    k = keras()
    layers: list[Any] = []
    for layer in _model_layers(model):
        if isinstance(layer, nn.Conv2d):
            stride, padding = _conv_facts(layer)
            if padding != (0, 0):
                layers.append(k.layers.ZeroPadding2D(padding, data_format="channels_first"))
            conv = k.layers.Conv2D(layer.out_channels, layer.kernel_size, strides=stride,
                                   use_bias=layer.bias is not None,
                                   data_format="channels_first")
            conv.build((None, layer.in_channels, None, None))
            conv.kernel.assign(_numpy(layer.weight.permute(2, 3, 1, 0)))
            if layer.bias is not None:
                conv.bias.assign(_numpy(layer.bias))
            layers.append(conv)
        elif isinstance(layer, _BatchNorm):
            layers.append(to_keras(layer, ndim=4))
        elif isinstance(layer, nn.ReLU):
            layers.append(k.layers.ReLU())
        elif isinstance(layer, nn.Flatten):
            # Keras' Flatten in its default (channels_last) setting flattens in memory order,
            # (C, H, W) here, as torch does; data_format="channels_first" would transpose.
            layers.append(k.layers.Flatten())
        else:
            dense = k.layers.Dense(layer.out_features, use_bias=layer.bias is not None)
            dense.build((None, layer.in_features))
            dense.kernel.assign(_numpy(layer.weight.T))
            if layer.bias is not None:
                dense.bias.assign(_numpy(layer.bias))
            layers.append(dense)
    return k.Sequential(layers)


def _flax_network_class() -> type:
    f = nnx()
    import jax.numpy as jnp

    class FlaxNetwork(f.Module):
        """A port of a torch conv net: NCHW in, NHWC inside (Flax's convolutions), NCHW out."""

        def __init__(self, kinds: Sequence[str], layers: Sequence[Any]) -> None:
            self.kinds = tuple(kinds)
            self.layers = f.List(list(layers))

        def __call__(self, x: Any, *, use_running_average: bool) -> Any:
            channels_last = False
            for kind, layer in zip(self.kinds, self.layers, strict=True):
                if kind in ("conv", "bn") and not channels_last and x.ndim == 4:
                    x, channels_last = jnp.moveaxis(x, 1, -1), True
                if kind == "conv":
                    x = layer(x)
                elif kind == "bn":
                    x = layer(x, use_running_average=use_running_average)
                elif kind == "relu":
                    x = f.relu(x)
                elif kind == "flatten":
                    if channels_last:
                        x, channels_last = jnp.moveaxis(x, -1, 1), False
                    x = x.reshape(x.shape[0], -1)
                else:
                    x = layer(x)
            return jnp.moveaxis(x, -1, 1) if channels_last else x

    return FlaxNetwork


def _ZEROS(key: Any, shape: Sequence[int], dtype: Any = np.float32) -> Any:
    """An initializer that draws nothing (the weights are copied over it at once)."""
    import jax.numpy as jnp

    return jnp.zeros(shape, dtype)


def torch_model_to_flax(model: nn.Sequential) -> Any:
    """A Flax NNX module equal to a torch ``nn.Sequential`` of Conv2d, BatchNorm2d, ReLU,
    Flatten and Linear; call it as ``net(x, use_running_average=...)`` on NCHW input.

    Flax's ``nnx.Conv`` is channels last: the module moves the channels to the last axis
    before the first convolution and back before ``Flatten`` (so the flattened order, and
    the linear layer's weights, are torch's). BN layers are :func:`to_flax` on the last axis.
    """
    f = nnx()
    import jax.numpy as jnp

    kinds, layers = [], []
    for layer in _model_layers(model):
        if isinstance(layer, nn.Conv2d):
            stride, padding = _conv_facts(layer)
            conv = f.Conv(layer.in_channels, layer.out_channels, tuple(layer.kernel_size),
                          strides=stride, padding=[(p, p) for p in padding],
                          use_bias=layer.bias is not None, kernel_init=_ZEROS, rngs=f.Rngs(0))
            conv.kernel[...] = jnp.asarray(_numpy(layer.weight.permute(2, 3, 1, 0)))
            if layer.bias is not None:
                conv.bias[...] = jnp.asarray(_numpy(layer.bias))
            kinds.append("conv")
            layers.append(conv)
        elif isinstance(layer, _BatchNorm):
            kinds.append("bn")
            layers.append(to_flax(layer, channels_last=True))
        elif isinstance(layer, nn.ReLU):
            kinds.append("relu")
            layers.append(None)
        elif isinstance(layer, nn.Flatten):
            kinds.append("flatten")
            layers.append(None)
        else:
            linear = f.Linear(layer.in_features, layer.out_features,
                              use_bias=layer.bias is not None, kernel_init=_ZEROS, rngs=f.Rngs(0))
            linear.kernel[...] = jnp.asarray(_numpy(layer.weight.T))
            if layer.bias is not None:
                linear.bias[...] = jnp.asarray(_numpy(layer.bias))
            kinds.append("linear")
            layers.append(linear)
    return _flax_network_class()(kinds, layers)


# --------------------------------------------------------------------------------------
# Synchronized BN: Flax's axis_name over JAX devices, and chapter 6's SyncBatchNorm
# --------------------------------------------------------------------------------------

def _flax_sync_step(channels: int, devices: int, momentum: float, eps: float,
                    fast_variance: bool) -> tuple[Any, Any, Any, Any]:
    """The module, its split state, the mesh, and the shard-mapped training step."""
    import jax
    from jax.sharding import PartitionSpec as P

    if jax.device_count() < devices:
        raise ValueError(
            f"{devices} devices asked for, JAX has {jax.device_count()}: on a CPU set "
            f"XLA_FLAGS=--xla_force_host_platform_device_count={devices} before JAX starts")
    f = nnx()
    module = f.BatchNorm(channels, axis=1, momentum=complement(momentum), epsilon=eps,
                         axis_name="batch", use_fast_variance=fast_variance, rngs=f.Rngs(0))
    graphdef, state = f.split(module)
    mesh = jax.make_mesh((devices,), ("batch",))

    def local(state: Any, xs: Any) -> Any:
        m = f.merge(graphdef, state)
        y = m(xs, use_running_average=False)
        return y, f.state(m)

    step = jax.shard_map(local, mesh=mesh, in_specs=(P(), P("batch")),
                         out_specs=(P("batch"), P()))
    return module, state, mesh, step


def _collectives(jaxpr: Any, found: list[tuple[str, int]]) -> list[tuple[str, int]]:
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name.startswith(("psum", "pmean", "all_gather", "all_to_all", "ppermute")):
            found.append((name, int(sum(np.prod(v.aval.shape) for v in eqn.invars))))
        for param in eqn.params.values():
            inner = getattr(param, "jaxpr", param)
            if hasattr(inner, "eqns"):
                _collectives(inner, found)
    return found


def flax_sync_collectives(channels: int, *, devices: int, per_device: int = 2,
                          spatial: int = 3, fast_variance: bool = False,
                          backward: bool = True) -> list[tuple[str, int]]:
    """The collectives of one forward (and backward) pass of Flax's synchronized BatchNorm.

    Traces the step of :func:`flax_sync_batch_norm` (inputs of shape
    ``(devices * per_device, channels, spatial)``), under ``jax.value_and_grad`` when
    ``backward``, and lists each collective primitive with the number of values it reduces
    per device. Nothing is run.
    """
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    _, state, mesh, step = _flax_sync_step(channels, devices, 0.1, 1e-5, fast_variance)
    shape = (devices * per_device, channels, spatial)

    def loss(xs: Any, dy: Any) -> Any:
        y, new_state = step(state, xs)
        return jnp.sum(y * dy), new_state

    with jax.set_mesh(mesh):
        state = jax.device_put(state, NamedSharding(mesh, P()))
        xs = jax.device_put(jnp.zeros(shape, jnp.float32), NamedSharding(mesh, P("batch")))
        fn = jax.value_and_grad(loss, has_aux=True) if backward else loss
        traced = jax.make_jaxpr(fn)(xs, xs)
    return _collectives(traced.jaxpr, [])


def written_sync_collectives(channels: int, *, devices: int, subtract_mean_twice: bool,
                             per_device: int = 2) -> list[tuple[str, int]]:
    """The collectives of JAX's derivative of a synchronized two-pass BN written by hand.

    The layer is $\\mu = $ ``pmean`` of the local means, $v = $ ``pmean`` of the local means
    of $(x-\\mu)^2$, $y = (x-\\mu)/\\sqrt{v+\\epsilon}$, traced under ``jax.shard_map``
    and ``jax.grad`` like :func:`flax_sync_collectives`. With ``subtract_mean_twice`` the
    centred input is computed a second time for $y$, as Flax's ``BatchNorm`` does (once for
    the variance, once to normalize); otherwise it is computed once and used for both.
    Returns each collective with the number of values it reduces per device. Nothing is run.
    """
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    if jax.device_count() < devices:
        raise ValueError(f"{devices} devices asked for, JAX has {jax.device_count()}")
    mesh = jax.make_mesh((devices,), ("batch",))

    def local(xs: Any) -> Any:
        mu = jax.lax.pmean(xs.mean(axis=0), "batch")
        centred = xs - mu
        var = jax.lax.pmean((centred * centred).mean(axis=0), "batch")
        if subtract_mean_twice:
            centred = xs - mu
        return centred * jax.lax.rsqrt(var + 1e-5)

    step = jax.shard_map(local, mesh=mesh, in_specs=P("batch"), out_specs=P("batch"))

    def loss(xs: Any, dy: Any) -> Any:
        return jnp.sum(step(xs) * dy)

    with jax.set_mesh(mesh):
        xs = jax.device_put(jnp.zeros((devices * per_device, channels), jnp.float32),
                            NamedSharding(mesh, P("batch")))
        traced = jax.make_jaxpr(jax.grad(loss))(xs, xs)
    return _collectives(traced.jaxpr, [])


def flax_sync_batch_norm(x: np.ndarray, dy: np.ndarray, *, devices: int,
                         momentum: float = 0.1, eps: float = 1e-5,
                         fast_variance: bool = False) -> dict[str, np.ndarray]:
    """One training step of ``nnx.BatchNorm(axis_name="batch")`` over ``devices`` JAX devices.

    ``x`` (shape ``(N, C, ...)``, channels on axis 1) is split along N into ``devices``
    equal shards with ``jax.shard_map``; each device normalizes its shard with statistics
    averaged over all of them by ``lax.pmean``. Returns the output ``y``, the input gradient
    ``dx`` of $\\sum y \\cdot dy$, and the module's ``mean`` and ``var`` after the step
    (PyTorch's ``momentum``, converted). Needs at least ``devices`` JAX devices (on a CPU:
    ``XLA_FLAGS=--xla_force_host_platform_device_count=N`` before JAX starts).
    """
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    x = np.asarray(x)
    if x.ndim < 2 or x.shape[0] % devices:
        raise ValueError(f"x must have shape (N, C, ...) with N a multiple of {devices} "
                         f"(pmean averages equal shards); got {x.shape}")
    f = nnx()
    module, state, mesh, step = _flax_sync_step(x.shape[1], devices, momentum, eps,
                                                fast_variance)

    def loss(xs: Any) -> Any:
        y, new_state = step(state, xs)
        return jnp.sum(y * dy), (y, new_state)

    with jax.set_mesh(mesh):
        state = jax.device_put(state, NamedSharding(mesh, P()))
        shards = jax.device_put(jnp.asarray(x), NamedSharding(mesh, P("batch")))
        (_, (y, new_state)), dx = jax.value_and_grad(loss, has_aux=True)(shards)
    f.update(module, new_state)
    return {"y": np.asarray(y), "dx": np.asarray(dx), "mean": np.asarray(module.mean[...]),
            "var": np.asarray(module.var[...])}


def sync_batch_norm_worker(rank: int, world_size: int, x: torch.Tensor, dy: torch.Tensor,
                           momentum: float, eps: float) -> dict[str, torch.Tensor]:
    """One training step of :class:`bncourse.distributed.SyncBatchNorm` on this rank's equal
    share of ``x`` (for :func:`bncourse.distributed.launch`): the local ``y`` and ``dx``,
    and the running statistics after the step."""
    from .distributed import SyncBatchNorm

    share = x.shape[0] // world_size
    xs = x[rank * share:(rank + 1) * share].clone().requires_grad_(True)
    layer = SyncBatchNorm(x.shape[1], eps=eps, momentum=momentum, dtype=x.dtype)
    y = layer(xs)
    y.backward(dy[rank * share:(rank + 1) * share])
    return {"y": y.detach(), "dx": xs.grad.detach(), "running_mean": layer.running_mean.clone(),
            "running_var": layer.running_var.clone()}
