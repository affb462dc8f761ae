"""The digits data, the small MLPs and the train-only-BN experiment."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from bncourse.freezing import batch_norm_layers, reestimate_running_stats
from bncourse.layer import BatchNorm
from bncourse.training import (
    TRAINED_VARIANTS,
    VARIANTS,
    ExperimentResult,
    accuracy,
    bn_parameter_count,
    drift_while_frozen,
    load_digits_data,
    make_mlp,
    output_layer,
    quiet,
    select_learning_rates,
    select_trainable,
    split_validation,
    switched_off_fraction,
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
    model = make_mlp((16, 16), seed=1, bias_before_bn=False)
    before = [p.detach().clone() for p in model.parameters()]
    bn_ids = {id(p) for m in batch_norm_layers(model) for p in m.parameters()}
    out_ids = {id(p) for p in output_layer(model).parameters()}
    n = select_trainable(model, variant, seed=1)
    train(model, data, epochs=1, batch_size=256, lr=0.05, seed=1, progress=False)
    changed = {"bn": 0, "out": 0, "hidden": 0}
    for p, p0 in zip(model.parameters(), before, strict=True):
        kind = "bn" if id(p) in bn_ids else "out" if id(p) in out_ids else "hidden"
        changed[kind] += int((p.detach() != p0).sum())
    total = sum(p.numel() for p in model.parameters())
    n_bn, n_out = 2 * 32, 16 * 10 + 10
    want = {
        "all": (n == total, changed["bn"] > 0 and changed["out"] > 0 and changed["hidden"] > 0),
        "bn_output": (n == n_bn + n_out,
                      changed["bn"] > 0 and changed["out"] > 0 and changed["hidden"] == 0),
        "bn_only": (n == n_bn, changed["bn"] > 0 and changed["out"] == changed["hidden"] == 0),
        "output_only": (n == n_out,
                        changed["out"] > 0 and changed["bn"] == changed["hidden"] == 0),
        "none": (n == 0, sum(changed.values()) == 0),
        "random_subset": (n == n_bn, changed["bn"] == 0
                          and 0 < changed["out"] + changed["hidden"] <= n),
    }[variant]
    assert want == (True, True), f"{variant}: {n} entries selected, changed: {changed}"


def test_random_subset_leaves_redundant_biases_out_of_the_pool():
    # With biases before BN, the random pool must hold only weights and the output bias.
    model = make_mlp((8, 8), seed=0, bias_before_bn=True)
    redundant = [model[0].bias, model[3].bias]
    for seed in range(20):
        select_trainable(model, "random_subset", seed=seed)
        assert not any(b.requires_grad for b in redundant), (
            f"seed {seed}: a bias directly followed by BN was put in the random pool"
        )
    assert make_mlp((8,), bias_before_bn=False)[0].bias is None
    assert make_mlp((8,), bn=None, bias_before_bn=False)[0].bias is not None, (
        "without BN the biases are not redundant and must be kept"
    )


def test_switched_off_fraction_counts_channels_that_never_pass_the_relu(data):
    model = make_mlp((8, 4), seed=0)
    reestimate_running_stats(model, [data.x_train])
    assert switched_off_fraction(model, data.x_train) == 0.0, "BN centres: none is off at init"
    with torch.no_grad():
        model[1].weight[:3] = 0.0          # gamma 0 and beta -1: output -1 for every input
        model[1].bias[:3] = -1.0
        model[4].weight[0] = 1e-3          # tiny gamma with a large negative beta
        model[4].bias[0] = -5.0
    got = switched_off_fraction(model, data.x_train)
    assert got == pytest.approx(4 / 12), f"4 of 12 channels switched off, measured {got}"
    assert model.training, "the model's mode must be restored"
    with pytest.raises(TypeError, match="Sequential"):
        switched_off_fraction(model[1], data.x_train)


def test_experiment_result_standard_errors_and_paired_difference():
    result = ExperimentResult(seeds=(0, 1, 2, 3), widths=(4,))
    result.accuracy = {"a": [0.9, 0.8, 0.85, 0.95], "b": [0.7, 0.75, 0.6, 0.8]}
    a, b = np.array(result.accuracy["a"]), np.array(result.accuracy["b"])
    assert result.sem("a") == pytest.approx(np.std(a, ddof=1) / 2)
    diff = result.paired_difference("a", "b")           # in percentage points
    d = 100 * (a - b)
    assert diff.mean == pytest.approx(d.mean()) and diff.se == pytest.approx(d.std(ddof=1) / 2)
    assert diff.n == 4 and diff.low < diff.mean < diff.high


def test_validation_split_comes_from_the_training_set_only(data):
    split = split_validation(data, 0.2, seed=0)

    def rows(x, y):  # every example as one sortable row: pixels, then label
        a = np.concatenate([x.numpy(), y.numpy()[:, None]], axis=1)
        return a[np.lexsort(a.T[::-1])]

    together = rows(torch.cat([split.x_train, split.x_test]), torch.cat([split.y_train,
                                                                         split.y_test]))
    assert np.array_equal(together, rows(data.x_train, data.y_train)), (
        "fit and validation parts together must be exactly the training set"
    )
    assert split.x_test.shape[0] == int(np.ceil(0.2 * data.x_train.shape[0]))  # sklearn rounds up
    n = data.x_train.shape[0]
    counts = np.bincount(split.y_test.numpy(), minlength=10) / len(split.y_test)
    overall = np.bincount(data.y_train.numpy(), minlength=10) / n
    assert np.max(np.abs(counts - overall)) < 0.02, "the validation split should be stratified"
    with pytest.raises(ValueError, match="fraction"):
        split_validation(data, 1.0)


def test_learning_rate_selection_picks_the_best_validation_mean(data):
    sel = select_learning_rates(data, variants=("bn_only",), lrs=(1e-4, 0.05), seeds=(3, 4),
                                widths=(16,), epochs=2, progress=False)
    means = sel.mean_accuracy("bn_only")
    assert np.asarray(sel.accuracy["bn_only"]).shape == (2, 2)
    assert sel.chosen["bn_only"] == sel.lrs[int(np.argmax(means))]
    assert sel.chosen["bn_only"] == 0.05, f"validation means by rate: {means}"
    with pytest.raises(ValueError, match="none"):
        select_learning_rates(data, variants=("none",))


def test_select_trainable_rejects_unknown_variant():
    with pytest.raises(ValueError, match="variant"):
        select_trainable(make_mlp((4,)), "everything")


def test_training_is_deterministic_and_lowers_the_loss(data):
    losses = [train(make_mlp((16,), seed=2), data, epochs=3, seed=2, progress=False)
              for _ in range(2)]
    assert losses[0] == losses[1], f"two identical runs gave {losses[0]} and {losses[1]}"
    assert losses[0][-1] < 0.5 * losses[0][0], f"the loss did not fall enough: {losses[0]}"


def test_experiment_bn_only_beats_nothing_and_reports_every_variant(data):
    lr = dict.fromkeys(TRAINED_VARIANTS, 0.05)
    result = train_only_bn_experiment(data, seeds=(0, 1), widths=(32, 32), epochs=3, lr=lr,
                                      progress=False)
    assert set(result.accuracy) == set(VARIANTS)
    assert result.trained["bn_only"] == result.trained["random_subset"] == 2 * 64
    assert result.trained["output_only"] == 32 * 10 + 10
    assert result.trained["bn_output"] == 2 * 64 + 32 * 10 + 10
    untrained = make_mlp((32, 32), seed=1, bias_before_bn=False)
    reestimate_running_stats(untrained, [data.x_train])
    want = accuracy(untrained, data.x_test, data.y_test)
    assert result.accuracy["none"][1] == want, "the 'none' variant must be the untrained network"
    assert result.mean("bn_only") > result.mean("none") + 0.2, (
        f"training gamma and beta gave {result.mean('bn_only'):.3f}, nothing "
        f"{result.mean('none'):.3f}"
    )
    assert result.switched_off["none"] == [0.0, 0.0], "an untrained BN network switches none off"
    low, high = result.spread("all")
    assert low <= result.mean("all") <= high
    with pytest.raises(ValueError, match="unknown"):
        train_only_bn_experiment(data, variants=("bn",))


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
    naive = drift_while_frozen(model, shifted, data.x_test, data.y_test, steps=20)
    frozen = drift_while_frozen(model, shifted, data.x_test, data.y_test, steps=20,
                                how="freeze_batch_norm")
    assert naive.drift[0] == 0.0 and naive.drift[-1] > 0.2, f"naive drift: {naive.drift}"
    assert np.all(frozen.drift == 0.0), f"frozen drift: {frozen.drift}"
    assert np.all(frozen.accuracy == frozen.accuracy[0]), "frozen accuracy changed"
    assert naive.model is not model and accuracy(naive.model, data.x_test, data.y_test) == (
        naive.accuracy[-1]), "the returned model must be the drifted copy after the last pass"
    assert isinstance(model[1], nn.BatchNorm1d) and model[1].training, "the input was modified"


def test_lr_selection_round_trips_through_json_and_the_stored_file_is_consistent(data, tmp_path):
    from bncourse.training import LR_FILE, LRSelection, best_rate

    sel = select_learning_rates(data, variants=("output_only",), lrs=(0.01, 0.1), seeds=(5,),
                                widths=(8,), epochs=1, progress=False)
    sel.to_json(tmp_path / "sel.json")
    again = LRSelection.from_json(tmp_path / "sel.json")
    assert again == sel, "the JSON round trip changed the selection"
    assert select_learning_rates(data, progress=False, **{**again.settings(), "lrs": (0.01,)}
                                 ).lrs == (0.01,)
    stored = LRSelection.from_json(LR_FILE)
    for variant, rate in stored.chosen.items():
        means = stored.mean_accuracy(variant)
        assert rate == best_rate(stored.lrs, means), (
            f"{variant}: stored choice {rate} is not the best validation mean {means}"
        )
    assert set(stored.chosen) == set(TRAINED_VARIANTS)
    # The stored file says how it was made (chapter 3 names the command).
    prov = stored.provenance
    assert prov is not None and prov["command"] == "python -m bncourse.training"
    assert {"runs", "machine", "load_average", "seconds"} <= set(prov)
    assert "date" in prov["machine"]


def test_correct_predictions_average_to_the_accuracy_and_keep_the_mode(data):
    from bncourse.training import correct_predictions

    model = make_mlp((8,), seed=2)
    train(model, data, epochs=1, seed=2, progress=False)
    model.train()
    hits = correct_predictions(model, data.x_test, data.y_test)
    assert hits.dtype == torch.bool and hits.shape == data.y_test.shape
    assert float(hits.double().mean()) == pytest.approx(accuracy(model, data.x_test, data.y_test))
    assert model.training, "the model's mode must be restored"


def test_a_tie_in_validation_accuracy_goes_to_the_smaller_rate_whatever_the_round_off():
    from bncourse.training import best_rate

    # 737 of 756 validation answers right at both rates: three seeds' float32 accuracies
    # (as training.accuracy returns them) whose float64 means differ in their last bits.
    per_seed = [[246, 246, 245], [247, 246, 244]]
    means = [np.mean([float(np.float32(c / 252)) for c in counts]) for counts in per_seed]
    assert means[0] != means[1], "the example must carry round-off"
    assert best_rate((0.003, 0.01), means) == 0.003
    assert best_rate((0.003, 0.01), [0.97, 0.9713]) == 0.01
