"""The digits data, the small MLPs and the train-only-BN experiment."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from bncourse.freezing import batch_norm_layers
from bncourse.layer import BatchNorm
from bncourse.training import (
    VARIANTS,
    accuracy,
    bn_parameter_count,
    drift_while_frozen,
    load_digits_data,
    make_mlp,
    quiet,
    select_trainable,
    torch_threads,
    train,
    train_only_bn_experiment,
)


@pytest.fixture(scope="module")
def data():
    return load_digits_data()


def test_digits_split_is_stratified_fixed_and_standardized(data):
    assert data.x_train.shape == (1257, 64) and data.x_test.shape == (540, 64)
    counts = np.bincount(data.y_train.numpy(), minlength=10) / len(data.y_train)
    test_counts = np.bincount(data.y_test.numpy(), minlength=10) / len(data.y_test)
    assert np.max(np.abs(counts - test_counts)) < 0.01, "the split should be stratified"
    again = load_digits_data()
    assert torch.equal(again.x_train, data.x_train), "the split must not change between calls"
    mean = data.x_train.mean(0).abs().max().item()
    std = data.x_train.std(0, unbiased=False)
    varying = data.pixel_std != 1.0
    err = (std[torch.from_numpy(varying)] - 1).abs().max().item()
    assert mean < 1e-5 and err < 1e-5, f"train mean off by {mean:.3g}, std off by {err:.3g}"


def test_make_mlp_layout_and_counts():
    model = make_mlp((8, 4), bn=BatchNorm)
    kinds = [type(m).__name__ for m in model]
    assert kinds == ["Linear", "BatchNorm", "ReLU", "Linear", "BatchNorm", "ReLU", "Linear"]
    assert bn_parameter_count(model) == 2 * (8 + 4)
    assert not batch_norm_layers(make_mlp((8, 4), bn=None))
    a, b = make_mlp((8,), seed=3), make_mlp((8,), seed=3)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


@pytest.mark.parametrize("variant", VARIANTS)
def test_select_trainable_moves_exactly_the_chosen_entries(data, variant):
    model = make_mlp((16, 16), seed=1)
    before = [p.detach().clone() for p in model.parameters()]
    bn_ids = {id(p) for m in batch_norm_layers(model) for p in m.parameters()}
    n = select_trainable(model, variant, seed=1)
    train(model, data, epochs=1, batch_size=256, lr=0.05, seed=1, progress=False)
    changed_bn = changed_other = 0
    for p, p0 in zip(model.parameters(), before, strict=True):
        changed = int((p.detach() != p0).sum())
        if id(p) in bn_ids:
            changed_bn += changed
        else:
            changed_other += changed
    total = sum(p.numel() for p in model.parameters())
    want = {
        "all": (n == total, changed_bn > 0 and changed_other > 0),
        "bn_only": (n == 2 * 32, changed_bn > 0 and changed_other == 0),
        "none": (n == 0, changed_bn == 0 and changed_other == 0),
        "random_subset": (n == 2 * 32, changed_bn == 0 and 0 < changed_other <= n),
    }[variant]
    assert want == (True, True), (
        f"{variant}: {n} entries selected, {changed_bn} BN entries and {changed_other} other "
        f"entries changed"
    )


def test_select_trainable_rejects_unknown_variant():
    with pytest.raises(ValueError, match="variant"):
        select_trainable(make_mlp((4,)), "everything")


def test_training_is_deterministic_and_lowers_the_loss(data):
    losses = [train(make_mlp((16,), seed=2), data, epochs=3, seed=2, progress=False)
              for _ in range(2)]
    assert losses[0] == losses[1], f"two identical runs gave {losses[0]} and {losses[1]}"
    assert losses[0][-1] < 0.5 * losses[0][0], f"the loss did not fall enough: {losses[0]}"


def test_experiment_bn_only_beats_nothing_and_reports_every_variant(data):
    result = train_only_bn_experiment(data, seeds=(0,), widths=(32, 32), epochs=3,
                                      progress=False)
    assert set(result.accuracy) == set(VARIANTS)
    assert result.trained["bn_only"] == result.trained["random_subset"] == 2 * 64
    untrained = make_mlp((32, 32), seed=0)
    from bncourse.freezing import reestimate_running_stats

    reestimate_running_stats(untrained, [data.x_train])
    want = accuracy(untrained, data.x_test, data.y_test)
    assert result.accuracy["none"][0] == want, "the 'none' variant must be the untrained network"
    assert result.mean("bn_only") > result.mean("none") + 0.2, (
        f"training gamma and beta gave {result.mean('bn_only'):.3f}, nothing "
        f"{result.mean('none'):.3f}"
    )
    low, high = result.spread("all")
    assert low <= result.mean("all") <= high


def test_progress_bar_stays_off_when_quiet(data, monkeypatch, capsys):
    monkeypatch.setenv("BNCOURSE_QUIET", "1")
    assert quiet()
    train(make_mlp((4,)), data, epochs=1)
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == "", f"output while quiet: {captured.err!r}"
    monkeypatch.setenv("BNCOURSE_QUIET", "")
    assert not quiet()


def test_torch_threads_restores_the_setting():
    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_drift_while_frozen_shows_the_pitfall_and_the_fix(data):
    model = make_mlp((16,), seed=4)
    train(model, data, epochs=2, seed=4, progress=False)
    shifted = 0.5 * data.x_train + 1.0
    naive = drift_while_frozen(model, shifted, data.x_test, data.y_test, steps=10)
    frozen = drift_while_frozen(model, shifted, data.x_test, data.y_test, steps=10,
                                how="freeze_batch_norm")
    assert naive.drift[0] == 0.0 and naive.drift[-1] > 0.2, f"naive drift: {naive.drift}"
    assert np.all(frozen.drift == 0.0), f"frozen drift: {frozen.drift}"
    assert np.all(frozen.accuracy == frozen.accuracy[0]), "frozen accuracy changed"
    assert isinstance(model[1], nn.BatchNorm1d) and model[1].training, "the input was modified"
