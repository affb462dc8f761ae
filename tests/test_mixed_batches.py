"""One shared BN against one BN per domain (bncourse.mixed_batches)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bncourse.claims import assert_close
from bncourse.mixed_batches import (
    DomainMLP,
    domain_accuracy,
    mixed_batch_experiment,
    shift_pixels,
    train_mixed,
)
from bncourse.training import load_digits_data


@pytest.fixture(scope="module")
def data():
    return load_digits_data()


def _first_bn_output(model: DomainMLP, x: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
    """ReLU of the first BN layer's output: what the next linear layer receives."""
    captured = []
    after = model.linears[1] if len(model.linears) > 1 else model.head
    handle = after.register_forward_hook(lambda m, inputs, out: captured.append(inputs[0].detach()))
    try:
        model(x, domain)
    finally:
        handle.remove()
    return captured[0]


def test_a_bn_per_domain_removes_the_shift_exactly_and_a_shared_one_does_not(data):
    x = data.x_train[:40]
    both = torch.cat([x, shift_pixels(x)])
    domain = torch.repeat_interleave(torch.arange(2), 40)
    per_domain = DomainMLP((16, 8), 2, seed=3).train()
    shared = DomainMLP((16, 8), 1, seed=3).train()
    for model in (per_domain, shared):
        for norms in model.norms:
            for bn in norms:
                bn.eps = 1e-30  # torch wants eps > 0; this small, the identity holds to round-off
    h = _first_bn_output(per_domain, both, domain)
    gap = assert_close(h[40:], h[:40], rtol=0, atol=1e-10, what="clean and shifted after the BN")
    assert gap < 1e-10
    h = _first_bn_output(shared, both, domain)
    assert float((h[40:] - h[:40]).abs().max()) > 0.1
    assert float(h.abs().max()) > 0.1  # the ReLU does not hide the comparison


def test_each_domain_goes_through_its_own_torch_batchnorm(data):
    x = torch.cat([data.x_train[:10], shift_pixels(data.x_train[10:16])])
    domain = torch.tensor([0] * 10 + [1] * 6)
    model = DomainMLP((5,), 2, seed=1).train()
    reference = [nn.BatchNorm1d(5, dtype=x.dtype) for _ in range(2)]
    h = model.linears[0](x).detach()
    want = torch.empty_like(h)
    for d in range(2):
        want[domain == d] = reference[d](h[domain == d]).detach()
    got = _first_bn_output(model, x, domain)
    assert_close(got, torch.relu(want), rtol=0, atol=1e-12,
                 what="routed BN and torch's BN per domain")
    for d in range(2):
        assert_close(model.norms[0][d].running_mean, reference[d].running_mean, rtol=0, atol=1e-12,
                     what=f"running mean of domain {d}")
        assert_close(model.norms[0][d].running_var, reference[d].running_var, rtol=0, atol=1e-12,
                     what=f"running variance of domain {d}")


def test_training_is_deterministic_and_beats_chance(data):
    runs = []
    for _ in range(2):
        model = DomainMLP((16,), 2, seed=0)
        train_mixed(model, [data.x_train, shift_pixels(data.x_train)], data.y_train, epochs=1,
                    batch_size=16, lr=0.05, seed=0)
        runs.append([domain_accuracy(model, shift_pixels(data.x_test) if d else data.x_test,
                                     data.y_test, d) for d in range(2)])
        assert not model.training
    assert runs[0] == runs[1]
    assert min(runs[0]) > 50


def test_the_experiment_shares_seeds_between_arms(data):
    result = mixed_batch_experiment(data, (0,), widths=(8,), epochs=1, batch_size=32, lr=0.05)
    assert result.shared.shape == result.per_domain.shape == (1, 2)
    assert ((result.shared >= 0) & (result.shared <= 100)).all()


@pytest.mark.parametrize("contrast", [0.0, -0.5, float("nan")])
def test_shift_rejects_a_contrast_that_is_not_positive(contrast):
    with pytest.raises(ValueError, match="contrast must be positive"):
        shift_pixels(torch.zeros(2, 64, dtype=torch.float64), contrast=contrast)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match=r"\(n, features\) tensor"):
        shift_pixels(torch.zeros(64))
    with pytest.raises(ValueError, match="domains must be a positive integer"):
        DomainMLP((4,), 0)
    model = DomainMLP((4,), 2)
    x = torch.zeros(3, 64, dtype=torch.float64)
    with pytest.raises(ValueError, match="below 2"):
        model(x, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="non-negative"):
        model(x, torch.tensor([0, -1, 1]))
    with pytest.raises(ValueError, match="int64 tensor of shape"):
        model(x, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="same number of examples"):
        train_mixed(model, [x, x[:2]], torch.zeros(3, dtype=torch.int64), epochs=1,
                    batch_size=2, lr=0.1, seed=0)
