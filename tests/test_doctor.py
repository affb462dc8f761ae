"""bncourse.doctor: each code on a model with the pitfall and one without, the model untouched."""

from __future__ import annotations

import copy
import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn

from bncourse.distributed import SyncBatchNorm, free_port
from bncourse.doctor import (
    CODES,
    KERAS_MOMENTUM_LIMIT,
    TINY_BATCH_VALUES,
    ExampleInputError,
    Finding,
    diagnose,
    report,
)
from bncourse.freezing import freeze_batch_norm
from bncourse.layer import BatchNorm
from bncourse.ports import keras as ports_keras
from tests.doctor_models import batch, clean_net, trained_clean_net

ROOT = Path(__file__).resolve().parents[1]


def _codes(findings: list[Finding]) -> set[tuple[str, str]]:
    return {(f.code, f.module) for f in findings}


def _with(findings: list[Finding], code: str) -> list[str]:
    return [f.module for f in findings if f.code == code]


def _vec(n: int = 16, features: int = 6, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, features, generator=torch.Generator().manual_seed(seed))


def _trained(model: nn.Module, x: torch.Tensor, steps: int = 3) -> nn.Module:
    """Training-mode forward passes, so that the running statistics are estimated."""
    mode = model.training
    model.train()
    with torch.no_grad():
        for _ in range(steps):
            model(x)
    return model.train(mode)


# --------------------------------------------------------------------------- the API


def test_codes_are_the_eight_of_the_course():
    assert set(CODES) == {
        "bias-before-bn", "frozen-affine-stats-moving", "keras-momentum", "tiny-batch",
        "stats-never-estimated", "batch-stats-in-eval", "dropout-before-bn",
        "half-precision-stats",
    }, f"codes: {sorted(CODES)}"
    assert all(isinstance(v, str) and "\n" not in v for v in CODES.values())


def test_finding_is_frozen():
    f = Finding("keras-momentum", "bn", "message")
    with pytest.raises(dataclasses.FrozenInstanceError):
        f.code = "other"  # type: ignore[misc]


def test_clean_modern_network_has_no_finding_in_either_mode():
    model = trained_clean_net()
    assert all(bn.momentum == 0.1 for bn in model if isinstance(bn, nn.BatchNorm2d))
    assert all(int(bn.num_batches_tracked) == 3 for bn in model if isinstance(bn, nn.BatchNorm2d))
    for mode in (True, False):
        model.train(mode)
        findings = diagnose(model, batch(32))
        assert findings == [], f"training={mode}: {report(findings)}"


def test_report_lists_each_finding_and_says_when_there_is_none():
    assert report([]) == "bncourse.doctor: no findings."
    text = report([Finding("keras-momentum", "features.1", "momentum 0.99."),
                   Finding("batch-stats-in-eval", "", "no running statistics.")])
    assert "2 finding(s)" in text
    assert "[keras-momentum] features.1: momentum 0.99." in text
    assert "[batch-stats-in-eval] (the model itself): no running statistics." in text


def test_report_wraps_long_messages_without_losing_words():
    findings = diagnose(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, momentum=0.9)),
                        batch(8))
    assert len(findings) == 2
    text = report(findings, width=60)
    assert max(len(line) for line in text.splitlines()) <= 60
    assert " ".join(text.split()) == " ".join(report(findings, width=None).split())
    assert len(report(findings, width=None).splitlines()) == 5  # count, then 2 x (blank, line)


# --------------------------------------------------------------------------- bias-before-bn


class _ConvThenBN(nn.Module):
    """A conv followed by a BN in a custom forward, nested one level down."""

    def __init__(self, bias: bool, flatten: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, bias=bias)
        self.flatten = flatten
        self.bn = nn.BatchNorm1d(4 * 6 * 6) if flatten else nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)
        if self.flatten:
            h = torch.flatten(h, 1)
        return torch.relu(self.bn(h))


def test_bias_before_bn_in_a_sequential_names_the_conv():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
    findings = diagnose(model, batch(8))
    assert _with(findings, "bias-before-bn") == ["0"], report(findings)
    message = findings[0].message
    assert "'1'" in message and "chapter 1" in message and "bias=False" in message


def test_no_bias_before_bn_without_a_bias():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU())
    assert _with(diagnose(model, batch(8)), "bias-before-bn") == []


def test_bias_before_bn_through_a_custom_forward_and_nesting():
    model = nn.Sequential(nn.Identity(), _ConvThenBN(bias=True))
    assert _with(diagnose(model, batch(8)), "bias-before-bn") == ["1.conv"]
    model = nn.Sequential(nn.Identity(), _ConvThenBN(bias=False))
    assert _with(diagnose(model, batch(8)), "bias-before-bn") == []


def test_flatten_between_conv_and_bn_is_not_straight_into():
    # The rule is tensor identity: torch.flatten makes a new tensor, so the chain is broken
    # (the bias is in fact cancelled there too: a documented blind spot).
    model = _ConvThenBN(bias=True, flatten=True)
    findings = diagnose(model, batch(8))
    assert _with(findings, "bias-before-bn") == [], report(findings)


def test_flatten_that_returns_its_input_object_is_invisible():
    class FlatAlready(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(6, 5)
            self.bn = nn.BatchNorm1d(5)

        def forward(self, x):
            h = self.fc(x)
            flat = torch.flatten(h, 1)
            assert flat is h  # nothing to flatten: torch returns the tensor itself
            return self.bn(flat)

    assert _with(diagnose(FlatAlready(), _vec()), "bias-before-bn") == ["fc"]


def test_modules_that_return_their_input_do_not_break_the_chain():
    model = nn.Sequential(nn.Linear(6, 5), nn.Sequential(nn.Identity()), nn.Identity(),
                          nn.BatchNorm1d(5))
    assert _with(diagnose(model, _vec()), "bias-before-bn") == ["0"]


def test_in_place_activation_between_breaks_the_chain():
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(inplace=True), nn.BatchNorm1d(5))
    findings = diagnose(model, _vec())
    assert _with(findings, "bias-before-bn") == [], report(findings)


def test_linear_bias_along_another_axis_than_the_bn_channels_is_not_cancelled():
    # Linear on (N, L, F) adds its bias along F; BatchNorm1d(L) normalizes per L over N and F.
    model = nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(4))
    x = torch.randn(8, 4, 6, generator=torch.Generator().manual_seed(0))
    assert _with(diagnose(model, x), "bias-before-bn") == []
    model = nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5))
    assert _with(diagnose(model, _vec()), "bias-before-bn") == ["0"]


def test_one_conv_feeding_two_bns_gives_one_finding_naming_both():
    class TwoHeads(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.a = nn.BatchNorm2d(4)
            self.b = nn.BatchNorm2d(4)

        def forward(self, x):
            h = self.conv(x)
            return self.a(h) + self.b(h)

    findings = [f for f in diagnose(TwoHeads(), batch(8)) if f.code == "bias-before-bn"]
    assert [f.module for f in findings] == ["conv"]
    assert "'a'" in findings[0].message and "'b'" in findings[0].message


# --------------------------------------------------------------------------- dropout-before-bn


@pytest.mark.parametrize("training", [True, False])
def test_dropout_before_bn_in_both_modes(training):
    model = nn.Sequential(nn.Linear(6, 5, bias=False), nn.Dropout(0.3), nn.BatchNorm1d(5))
    model.train(training)
    if not training:
        _trained(model, _vec()).eval()
    findings = diagnose(model, _vec())
    assert _codes(findings) == {("dropout-before-bn", "1")}, report(findings)
    assert "chapter 9" in findings[0].message and "'2'" in findings[0].message


def test_dropout_after_bn_or_with_p_zero_is_not_flagged():
    model = nn.Sequential(nn.Linear(6, 5, bias=False), nn.BatchNorm1d(5), nn.ReLU(),
                          nn.Dropout(0.5), nn.Linear(5, 2))
    assert diagnose(model, _vec()) == []
    model = nn.Sequential(nn.Linear(6, 5, bias=False), nn.Dropout(0.0), nn.BatchNorm1d(5))
    assert diagnose(model, _vec()) == []


@pytest.mark.parametrize("training", [True, False])
def test_bias_is_followed_through_a_dropout(training):
    model = nn.Sequential(nn.Linear(6, 5), nn.Dropout(0.3), nn.BatchNorm1d(5)).train(training)
    if not training:
        _trained(model, _vec()).eval()
    found = _codes(diagnose(model, _vec()))
    assert found == {("bias-before-bn", "0"), ("dropout-before-bn", "1")}, found


# --------------------------------------------------------------------------- per-layer codes


def test_frozen_affine_stats_moving():
    model = nn.Sequential(nn.Linear(6, 5, bias=False), nn.BatchNorm1d(5))
    for p in model[1].parameters():
        p.requires_grad_(False)
    findings = diagnose(model, _vec())
    assert _codes(findings) == {("frozen-affine-stats-moving", "1")}, report(findings)
    assert "chapter 3" in findings[0].message and "eval" in findings[0].message


def test_frozen_affine_in_eval_mode_or_trainable_is_not_flagged():
    model = _trained(nn.Sequential(nn.Linear(6, 5, bias=False), nn.BatchNorm1d(5)), _vec())
    assert diagnose(model, _vec()) == []  # trainable, training mode
    freeze_batch_norm(model)
    model.train()  # the frozen layer stays in eval mode
    assert not model[1].training
    assert diagnose(model, _vec()) == []


def test_frozen_layer_with_momentum_zero_keeps_its_statistics():
    model = nn.Sequential(nn.Linear(6, 5, bias=False), nn.BatchNorm1d(5, momentum=0.0))
    model[1].requires_grad_(False)
    assert diagnose(model, _vec()) == []


def test_keras_momentum_above_the_limit():
    model = nn.Sequential(nn.Linear(6, 5, bias=False), nn.BatchNorm1d(5, momentum=0.99))
    findings = diagnose(model, _vec())
    assert _codes(findings) == {("keras-momentum", "1")}, report(findings)
    assert "chapter 7" in findings[0].message and "momentum=0.01" in findings[0].message


def test_the_suggested_momentum_makes_torch_store_what_keras_stores():
    keras = ports_keras()
    x = _vec(8, features=5, seed=4)
    layer = keras.layers.BatchNormalization(momentum=0.99)
    layer(x.numpy(), training=True)
    keras_mean = layer.moving_mean.value.detach().clone()  # a torch tensor on this backend

    ported = nn.BatchNorm1d(5, momentum=layer.momentum)  # copied without conversion
    findings = diagnose(nn.Sequential(ported), x)
    assert [f.code for f in findings] == ["keras-momentum"]
    fix = re.search(r"Fix: momentum=([0-9.]+)", findings[0].message)
    assert fix is not None, findings[0].message
    converted = nn.BatchNorm1d(5, momentum=float(fix.group(1)))
    assert diagnose(nn.Sequential(converted), x) == []
    with torch.no_grad():
        converted(x)
        ported(x)
    torch.testing.assert_close(converted.running_mean, keras_mean, rtol=1e-5, atol=1e-7)
    gap = (ported.running_mean - keras_mean).abs().max()
    assert gap > 100 * 1e-5 * keras_mean.abs().max(), f"unconverted gap only {gap:.2g}"


@pytest.mark.parametrize("momentum", [0.1, KERAS_MOMENTUM_LIMIT, None])
def test_no_keras_momentum_at_or_below_the_limit_or_cumulative(momentum):
    model = nn.Sequential(nn.Linear(6, 5, bias=False), nn.BatchNorm1d(5, momentum=momentum))
    assert diagnose(model, _vec()) == []


def test_tiny_batch_counts_batch_times_spatial_size():
    model = nn.Sequential(nn.Conv2d(3, 4, 1, bias=False), nn.BatchNorm2d(4))
    x = torch.randn(1, 3, 2, 2)  # m = 1 * 2 * 2 = 4
    findings = diagnose(model, x)
    assert _codes(findings) == {("tiny-batch", "1")}, report(findings)
    assert "m = 4" in findings[0].message and "chapter 9" in findings[0].message
    x = torch.randn(2, 3, 2, 2)  # m = 8: enough
    assert diagnose(model, x) == []
    assert TINY_BATCH_VALUES == 8


def test_tiny_batch_of_one_value_is_diagnosed_where_the_layer_itself_would_raise():
    model = nn.Sequential(nn.Linear(6, 5, bias=False), nn.BatchNorm1d(5))
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        copy.deepcopy(model)(_vec(1))
    findings = diagnose(model, _vec(1))
    assert _codes(findings) == {("tiny-batch", "1")}, report(findings)
    assert "m = 1" in findings[0].message


def test_tiny_batch_in_eval_mode_with_running_statistics_is_not_flagged():
    model = _trained(nn.Sequential(nn.Linear(6, 5, bias=False), nn.BatchNorm1d(5)), _vec()).eval()
    assert diagnose(model, _vec(2)) == []


def test_stats_never_estimated():
    model = nn.Sequential(nn.Linear(6, 5, bias=False), nn.BatchNorm1d(5)).eval()
    findings = diagnose(model, _vec())
    assert _codes(findings) == {("stats-never-estimated", "1")}, report(findings)
    assert "chapter 5" in findings[0].message


def test_statistics_estimated_or_set_by_hand_are_not_flagged():
    model = _trained(nn.Sequential(nn.Linear(6, 5, bias=False), nn.BatchNorm1d(5)), _vec()).eval()
    assert diagnose(model, _vec()) == []
    ported = nn.Sequential(nn.Linear(6, 5, bias=False), nn.BatchNorm1d(5)).eval()
    with torch.no_grad():  # a port copies the statistics, not the counter
        ported[1].running_mean.copy_(torch.linspace(-1, 1, 5))
        ported[1].running_var.copy_(torch.linspace(0.5, 2, 5))
    assert int(ported[1].num_batches_tracked) == 0
    assert diagnose(ported, _vec()) == []


@pytest.mark.parametrize("training", [True, False])
def test_batch_stats_in_eval(training):
    model = nn.Sequential(nn.Linear(6, 5, bias=False),
                          nn.BatchNorm1d(5, track_running_stats=False)).train(training)
    findings = diagnose(model, _vec())
    assert _codes(findings) == {("batch-stats-in-eval", "1")}, report(findings)
    assert "chapter 5" in findings[0].message


def test_running_statistics_are_not_batch_stats_in_eval():
    model = _trained(nn.Sequential(nn.Linear(6, 5, bias=False), nn.BatchNorm1d(5)), _vec())
    assert _with(diagnose(model.eval(), _vec()), "batch-stats-in-eval") == []


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_stats(dtype):
    model = nn.Sequential(nn.Linear(6, 5, bias=False), nn.BatchNorm1d(5)).to(dtype)
    findings = diagnose(model, _vec().to(dtype))
    assert _codes(findings) == {("half-precision-stats", "1")}, report(findings)
    assert str(dtype).removeprefix("torch.") in findings[0].message


def test_float32_stats_under_a_half_input_are_not_flagged():
    model = nn.Sequential(nn.Linear(6, 5, bias=False).half(), nn.BatchNorm1d(5))
    assert diagnose(model, _vec().half()) == []


def test_messages_name_their_chapter():
    chapters = {"bias-before-bn": 1, "frozen-affine-stats-moving": 3, "keras-momentum": 7,
                "tiny-batch": 9, "stats-never-estimated": 5, "batch-stats-in-eval": 5,
                "dropout-before-bn": 9, "half-precision-stats": 9}
    model = nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5, momentum=0.9), nn.Dropout(0.2),
                          nn.BatchNorm1d(5, track_running_stats=False))
    model[1].requires_grad_(False)
    half = nn.BatchNorm1d(5).half().eval()
    findings = diagnose(model, _vec(2)) + diagnose(half, _vec(2, features=5).half())
    seen = {f.code for f in findings}
    assert seen == set(CODES), f"missing: {set(CODES) - seen}"
    for f in findings:
        assert f"chapter {chapters[f.code]})" in f.message, f"{f.code}: {f.message}"


# --------------------------------------------------------------------------- layer classes


def _lazy_bn() -> nn.Module:
    bn = nn.LazyBatchNorm1d(momentum=0.99)
    with torch.no_grad():
        bn(torch.randn(4, 5))
    with torch.no_grad():
        bn.running_mean.zero_()
        bn.running_var.fill_(1.0)
        bn.num_batches_tracked.zero_()
    return bn


@pytest.mark.parametrize("make", [
    lambda: nn.BatchNorm1d(5, momentum=0.99),
    _lazy_bn,
    lambda: BatchNorm(5, momentum=0.99),
    lambda: SyncBatchNorm(5, momentum=0.99),
    lambda: nn.SyncBatchNorm(5, momentum=0.99),
], ids=["BatchNorm1d", "LazyBatchNorm1d", "bncourse.BatchNorm", "bncourse.SyncBatchNorm",
        "nn.SyncBatchNorm"])
def test_every_bn_class_is_recognized(make):
    model = nn.Sequential(nn.Linear(6, 5), make())
    assert not (dist.is_available() and dist.is_initialized())
    found = _codes(diagnose(model, _vec(4)))
    assert found == {("bias-before-bn", "0"), ("keras-momentum", "1"), ("tiny-batch", "1")}
    found = _codes(diagnose(model.eval(), _vec(4)))
    assert found == {("bias-before-bn", "0"), ("keras-momentum", "1"),
                     ("stats-never-estimated", "1")}


def test_lazy_modules_not_yet_materialized_are_refused():
    model = nn.Sequential(nn.Linear(6, 5), nn.LazyBatchNorm1d())
    with pytest.raises(ValueError, match="materialized"):
        diagnose(model, _vec())
    assert isinstance(model[1], nn.LazyBatchNorm1d)


def test_instance_norm_is_not_a_bn():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.InstanceNorm2d(4, momentum=0.99,
                                                                track_running_stats=True))
    assert diagnose(model, batch(1)) == []


# --------------------------------------------------------------------------- leaves the model


def _bits(t: torch.Tensor) -> tuple:
    t = t.detach().contiguous()
    return (t.dtype, tuple(t.shape), t.reshape(-1).view(torch.uint8).tolist())


def _snapshot(model: nn.Module) -> dict:
    return {
        "state": {k: _bits(v) for k, v in model.state_dict(keep_vars=True).items()},
        "grads": {k: None if p.grad is None else _bits(p.grad)
                  for k, p in model.named_parameters()},
        "requires_grad": {k: p.requires_grad for k, p in model.named_parameters()},
        "training": {k: m.training for k, m in model.named_modules()},
        "objects": [id(t) for t in [*model.parameters(), *model.buffers()]],
    }


class _Mutating(nn.Module):
    """A model whose forward changes its own state: a counter, a parameter, a mode, then raises."""

    def __init__(self, fail: bool) -> None:
        super().__init__()
        self.fail = fail
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4, momentum=None)
        self.bn2 = nn.BatchNorm2d(4)
        self.register_buffer("calls", torch.zeros((), dtype=torch.int64))

    def forward(self, x):
        self.calls += 1
        with torch.no_grad():
            self.conv.weight.mul_(2.0)
        self.conv.bias.requires_grad_(False)
        self.bn2.train(not self.bn2.training)
        self.bn.running_var = torch.full_like(self.bn.running_var, 7.0)
        h = self.bn(self.conv(x))
        h = self.bn2(h)
        if self.fail:
            raise RuntimeError("shape trouble")
        return h.mean(dim=(2, 3))


def _used_model(fail: bool) -> nn.Module:
    torch.manual_seed(0)
    model = _Mutating(fail)
    model.fail = False
    _trained(model, batch(8))
    model.fail = fail
    model.conv.weight.grad = torch.full_like(model.conv.weight, float("nan"))
    model.bn.weight.grad = torch.randn(4)
    model.bn.bias.requires_grad_(False)
    model.bn2.eval()
    return model


@pytest.mark.parametrize("fail", [False, True])
def test_the_model_is_left_exactly_as_found(fail):
    model = _used_model(fail)
    before = _snapshot(model)
    rng = torch.get_rng_state()
    if fail:
        with pytest.raises(ExampleInputError, match="example input .* failed.*shape trouble"):
            diagnose(model, batch(8))
    else:
        diagnose(model, batch(8))
    after = _snapshot(model)
    for key in before:
        assert after[key] == before[key], f"{key} changed"
    assert torch.equal(torch.get_rng_state(), rng), "the global random state changed"
    assert "forward" not in model.bn.__dict__ and "forward" not in model.bn2.__dict__


def test_a_pending_backward_still_works_after_diagnose():
    model = trained_clean_net()
    loss = model(batch(8)).square().sum()
    versions = [p._version for p in model.parameters()]
    diagnose(model, batch(8))
    assert [p._version for p in model.parameters()] == versions
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_dropout_in_training_does_not_consume_the_random_state():
    model = nn.Sequential(nn.Dropout(0.5), nn.Linear(6, 5, bias=False), nn.BatchNorm1d(5))
    torch.manual_seed(3)
    diagnose(model, _vec())
    after = torch.rand(4)
    torch.manual_seed(3)
    assert torch.equal(torch.rand(4), after)


# --------------------------------------------------------------------------- DDP


def test_ddp_wrapped_model_gives_the_unwrapped_names_and_is_left_as_found():
    port = free_port()
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0,
                            world_size=1)
    try:
        torch.manual_seed(0)
        inner = nn.Sequential(nn.Conv2d(3, 4, 3), SyncBatchNorm(4),
                              nn.Sequential(nn.Conv2d(4, 4, 1, bias=False),
                                            nn.BatchNorm2d(4, momentum=0.99)))
        ddp = nn.parallel.DistributedDataParallel(inner)
        _trained(ddp, batch(8))
        before = _snapshot(ddp)
        findings = diagnose(ddp, batch(1))
        assert _snapshot(ddp) == before
        assert _codes(findings) == {("bias-before-bn", "0"), ("keras-momentum", "2.1")}
        x = torch.randn(1, 3, 3, 3)  # m = 1 at both BNs, one process in the group
        assert {("tiny-batch", "1"), ("tiny-batch", "2.1")} <= _codes(diagnose(ddp, x))
        assert _snapshot(ddp) == before
    finally:
        dist.destroy_process_group()


def test_compiled_and_data_parallel_models_are_diagnosed_through_the_eager_model():
    inner = nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5))
    for wrapped in (torch.compile(inner), nn.DataParallel(inner)):
        assert _codes(diagnose(wrapped, _vec())) == {("bias-before-bn", "0")}, type(wrapped)


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("model", [None, "resnet", lambda x: x])
def test_a_model_that_is_not_a_module_is_refused(model):
    with pytest.raises(TypeError, match="torch.nn.Module"):
        diagnose(model, _vec())


@pytest.mark.parametrize("example", [None, [1.0, 2.0], (), (_vec(), 3), "x"])
def test_an_example_that_is_not_tensors_is_refused(example):
    model = nn.Sequential(nn.Linear(6, 5, bias=False), nn.BatchNorm1d(5))
    with pytest.raises(TypeError, match="example_input must be a torch.Tensor"):
        diagnose(model, example)


def test_an_example_the_model_rejects_says_so():
    model = nn.Sequential(nn.Linear(6, 5, bias=False), nn.BatchNorm1d(5))
    with pytest.raises(ExampleInputError, match=r"example input \(\(4, 7\)"):
        diagnose(model, torch.randn(4, 7))


def test_several_positional_inputs():
    class Two(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(6, 5)
            self.bn = nn.BatchNorm1d(5)

        def forward(self, a, b):
            return self.bn(self.fc(a + b))

    assert _codes(diagnose(Two(), (_vec(), _vec(seed=1)))) == {("bias-before-bn", "fc")}


def test_a_bn_called_with_a_keyword_argument():
    class Keyword(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(6, 5)
            self.bn = nn.BatchNorm1d(5)

        def forward(self, x):
            return self.bn(input=self.fc(x))

    assert _codes(diagnose(Keyword(), _vec(4))) == {("bias-before-bn", "fc"), ("tiny-batch", "bn")}


# --------------------------------------------------------------------------- command line


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "bncourse.doctor", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_cli_prints_the_report_and_exits_1_with_findings():
    done = _cli("tests.doctor_models:biased_net", "--shape", "4,3,8,8")
    assert done.returncode == 1, done.stderr
    assert "bncourse.doctor: 2 finding(s)." in done.stdout
    assert "[bias-before-bn] 0: Conv2d '0' has a bias" in done.stdout
    assert "[keras-momentum] 1: " in done.stdout


def test_cli_exits_0_on_a_clean_model_given_with_its_example():
    done = _cli("tests.doctor_models:clean_pair")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "bncourse.doctor: no findings."


@pytest.mark.parametrize("args, message", [
    (("tests.doctor_models",), "expected module:factory"),
    (("tests.doctor_models:missing",), "no attribute 'missing'"),
    (("tests.doctor_models:biased_net",), "give --shape"),
    (("tests.doctor_models:not_a_model", "--shape", "2,3"), "must be a torch.nn.Module"),
    (("tests.doctor_models:biased_net", "--shape", "4,5,8,8"), "failed in the model's forward"),
])
def test_cli_usage_errors_exit_2_with_a_message(args, message):
    done = _cli(*args)
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert message in done.stderr, done.stderr


def test_clean_net_factory_is_the_clean_network():
    model = clean_net()
    assert not any(getattr(m, "bias", None) is not None for m in model
                   if isinstance(m, nn.Conv2d))
