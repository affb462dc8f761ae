"""bncourse.BatchNorm under torch.compile, against torch's layer in the same compiled network.

A compiled model with the layer is one graph (no graph break, ``fullgraph=True`` works) in
training and in eval mode, on ``aot_eager`` (Dynamo and AOTAutograd, run eagerly: float64,
tight tolerance) and on ``inductor`` (generated kernels: float32). Compiling with inductor on
a small machine takes seconds, so the networks are small and the tests few; the time of a
compiled step is measured by ``python -m bncourse.bench``, not here.
"""

from __future__ import annotations

import shutil

import pytest
import torch
from torch import nn

import bncourse

F64 = torch.float64


def _net(bn: type[nn.Module], dtype=F64) -> nn.Sequential:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), bn(4), nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1), bn(4), nn.ReLU(),
    ).to(dtype)
    with torch.no_grad():  # parameters of the BN layers away from their defaults
        for m in net:
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    return net


def _pair(dtype=F64) -> tuple[nn.Sequential, nn.Sequential]:
    theirs = _net(nn.BatchNorm2d, dtype)
    ours = _net(bncourse.BatchNorm, dtype)
    ours.load_state_dict(theirs.state_dict())
    return ours, theirs


def _close(what: str, a: torch.Tensor, b: torch.Tensor, tol: float) -> None:
    assert a.shape == b.shape and a.dtype == b.dtype, (what, a.shape, b.shape, a.dtype, b.dtype)
    scale = max(1.0, float(b.detach().abs().max()))
    err = float((a - b).detach().abs().max()) / scale
    assert err <= tol, f"{what}: ours and torch's differ by {err:.3g} (relative), over {tol:g}"


def _compare_compiled(backend: str, dtype, tol: float, steps: int = 2) -> None:
    """Both networks compiled with fullgraph=True; train steps, then eval, compared."""
    torch._dynamo.reset()
    ours, theirs = _pair(dtype)
    c_ours = torch.compile(ours, backend=backend, fullgraph=True)
    c_theirs = torch.compile(theirs, backend=backend, fullgraph=True)
    gen = torch.Generator().manual_seed(1)
    for step in range(steps):
        x = (2.0 + 3.0 * torch.randn(6, 2, 5, 5, generator=gen)).to(dtype)
        ya, yb = c_ours(x), c_theirs(x)
        _close(f"{backend}: training output, step {step}", ya, yb, tol)
        (ya * ya).sum().backward()
        (yb * yb).sum().backward()
    for (name, a), (_, b) in zip(ours.named_parameters(), theirs.named_parameters(),
                                 strict=True):
        _close(f"{backend}: gradient of {name}", a.grad, b.grad, tol)
    for (name, a), (_, b) in zip(ours.state_dict().items(), theirs.state_dict().items(),
                                 strict=True):
        if a.is_floating_point():
            _close(f"{backend}: {name} after {steps} compiled steps", a, b, tol)
        else:
            assert torch.equal(a, b), (name, a, b)
    ours.eval()
    theirs.eval()
    x = torch.randn(3, 2, 5, 5, generator=gen).to(dtype)
    _close(f"{backend}: eval output", c_ours(x), c_theirs(x), tol)
    torch._dynamo.reset()


@pytest.mark.parametrize("training", [True, False])
def test_a_compiled_model_with_the_layer_has_no_graph_break(training):
    torch._dynamo.reset()
    ours, theirs = _pair()
    x = torch.randn(4, 2, 5, 5, dtype=F64)
    explained = [torch._dynamo.explain(m.train(training))(x) for m in (ours, theirs)]
    torch._dynamo.reset()
    assert explained[1].graph_break_count == 0, "torch's own layer breaks the graph"
    assert explained[0].graph_break_count == 0, (
        f"{explained[0].graph_break_count} graph breaks with bncourse.BatchNorm "
        f"(training={training}): {[str(r.reason)[:200] for r in explained[0].break_reasons]}"
    )
    assert explained[0].graph_count == explained[1].graph_count == 1


def test_fullgraph_aot_eager_matches_torchs_compiled_network():
    _compare_compiled("aot_eager", F64, 1e-10)


def _results(net: nn.Module, x: torch.Tensor, run=None) -> dict[str, torch.Tensor]:
    """One training step (output, parameter gradients, buffers after it), then eval output.

    ``run`` is what is called (``net`` compiled, or ``net`` itself when None).
    """
    run = net if run is None else run
    y = run(x)
    (y * y).sum().backward()
    out = {"training output": y.detach()}
    out.update({f"gradient of {k}": p.grad for k, p in net.named_parameters()})
    out.update({k: b for k, b in net.named_buffers() if b.is_floating_point()})
    net.eval()
    out["eval output"] = run(x[:3]).detach()
    return out


@pytest.mark.skipif(not any(shutil.which(cc) for cc in ("g++", "c++", "clang++")),
                    reason="inductor needs a C++ compiler")
def test_fullgraph_inductor_matches_torchs_compiled_network():
    # float32 kernels of two different formulas differ by round-off, which sums over the
    # batch amplify (a conv bias before BN has a gradient near zero, made of cancelling
    # terms). So both are measured against the exact result (torch's layer, eager float64):
    # ours must be about as close to it as torch's own compiled float32 network.
    torch._dynamo.reset()
    ours, theirs = _pair(torch.float32)
    exact = _net(nn.BatchNorm2d, F64)
    exact.load_state_dict(theirs.state_dict())
    x = 2.0 + 3.0 * torch.randn(6, 2, 5, 5, generator=torch.Generator().manual_seed(1))
    got = _results(ours, x, torch.compile(ours, backend="inductor", fullgraph=True))
    ref = _results(theirs, x, torch.compile(theirs, backend="inductor", fullgraph=True))
    want = _results(exact, x.double())
    torch._dynamo.reset()
    for name, w in want.items():
        scale = max(1.0, float(w.abs().max()))
        err_ours = float((got[name].double() - w).abs().max()) / scale
        err_torch = float((ref[name].double() - w).abs().max()) / scale
        floor = 8 * torch.finfo(torch.float32).eps
        assert err_ours <= 8 * max(err_torch, floor), (
            f"inductor, {name}: ours is {err_ours:.3g} from the float64 result, torch's "
            f"compiled layer {err_torch:.3g}"
        )


def test_torch_func_still_works_after_compiling():
    # Compiling selects the Function without jvp; torch.func outside the compiler must still
    # get the one with jvp and a vmap rule (training mode, batch statistics).
    torch._dynamo.reset()
    ours, _ = _pair()
    torch.compile(ours, backend="aot_eager", fullgraph=True)(torch.randn(4, 2, 5, 5, dtype=F64))
    torch._dynamo.reset()
    layer_o = bncourse.BatchNorm(4, track_running_stats=False, dtype=F64)
    layer_t = nn.BatchNorm1d(4, track_running_stats=False, dtype=F64)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(5, 4, 3, dtype=F64, generator=gen)
    t = torch.randn(5, 4, 3, dtype=F64, generator=gen)
    ya, ja = torch.func.jvp(layer_o, (x,), (t,))
    yb, jb = torch.func.jvp(layer_t, (x,), (t,))
    _close("jvp output", ya, yb, 1e-10)
    _close("jvp tangent", ja, jb, 1e-10)
    xs = torch.randn(3, 5, 4, 3, dtype=F64, generator=gen)
    _close("vmap output", torch.func.vmap(layer_o)(xs), torch.func.vmap(layer_t)(xs), 1e-10)
