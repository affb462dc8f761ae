"""DDP's BN buffers when the ranks' data differ (bncourse.distributed.ddp_buffers).

One launch of two processes (module-scoped) records what torch's DDP and gloo do and trains
one short run; the tests read it. The stored measurement of the chapter is checked against
its rule.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from bncourse.claims import assert_close
from bncourse.distributed import ddp_buffers as B
from bncourse.mixed_batches import shift_pixels
from bncourse.training import load_digits_data

MOMENTUM = 0.1  # torch's default BN momentum, which the probe's model keeps


@pytest.fixture(scope="module")
def runs():
    # slow enough that the running statistics keep up with the weights (the chapter's rate)
    config = {"widths": [16], "batch_size": 16, "epochs": 2, "lr": 0.003}
    return B.launch(B.chapter_worker, 2, ((0,), config, ("broadcast", "local")), timeout=300)


def _update(before, batch_mean):
    return (1 - MOMENTUM) * before + MOMENTUM * batch_mean


def test_with_forward_sync_rank0s_buffers_replace_the_others_before_every_forward(runs):
    steps = [r["probe"]["buffers"][True] for r in runs]
    for rank in range(2):
        for s, step in enumerate(steps[rank]):
            # what each rank updates is rank 0's buffer as it was after rank 0's previous step
            start = steps[0][s - 1]["after"] if s else torch.zeros_like(step["after"])
            assert_close(step["after"], _update(start, step["batch_mean"]), rtol=0, atol=1e-12,
                         what=f"rank {rank}'s running mean after step {s}")
    # and so rank 1 holds statistics one step away from rank 0's, not its own history
    assert float((steps[1][-1]["after"] - steps[0][-1]["after"]).abs().max()) > 0.1


def test_without_forward_sync_every_rank_keeps_its_own_buffers(runs):
    for rank in range(2):
        steps = runs[rank]["probe"]["buffers"][False]
        for s, step in enumerate(steps):
            start = steps[s - 1]["after"] if s else torch.zeros_like(step["after"])
            assert torch.equal(step["before"], start)
            assert_close(step["after"], _update(start, step["batch_mean"]), rtol=0, atol=1e-12,
                         what=f"rank {rank}'s running mean after step {s}")


def test_torch_syncbatchnorm_refuses_cpu_tensors(runs):
    message = runs[0]["probe"]["torch_sync"]
    assert message is not None and "GPU" in message


def test_gloo_all_reduce_of_two_ranks_is_the_same_exact_sum_everywhere(runs):
    results = [r["probe"]["all_reduce"] for r in runs]
    inputs = results[0]["inputs"]
    assert torch.equal(results[0]["result"], results[1]["result"])
    assert torch.equal(results[0]["result"], inputs[0] + inputs[1])
    assert torch.equal(results[0]["result"], inputs[1] + inputs[0])


def test_both_settings_train_the_same_weights_and_rank0_has_the_checkpoints_stats(runs):
    training = runs[0]["training"]
    assert training == runs[1]["training"]
    acc, pos = training["accuracy"], training["position"]
    # the buffers play no part in the training-mode forward: the same weights, the same rank 0
    assert acc["broadcast"]["rank0"] == acc["local"]["rank0"]
    assert acc["broadcast"]["precise"] == acc["local"]["precise"]
    # rank 0's running mean lies at the clean domain's, rank 1's at the shifted one's only
    # when it keeps its own (with the broadcast, one update of momentum 0.1 away from rank 0's)
    assert abs(pos["local"][0][0]) < 0.05 and abs(pos["local"][0][1] - 1) < 0.05
    assert abs(pos["broadcast"][0][1] - MOMENTUM) < 0.05
    assert acc["local"]["per_rank"][0] == [acc["local"]["rank0"][0][0], acc["local"]["rank1"][0][1]]


def test_shards_are_disjoint_halves_and_rank1s_is_shifted():
    data = load_digits_data()
    (x0, y0), (x1, y1) = B.shards(data)
    n = data.x_train.shape[0] // 2
    assert x0.shape[0] == x1.shape[0] == n
    assert torch.equal(x0, data.x_train[0:2 * n:2])
    assert torch.equal(x1, shift_pixels(data.x_train[1:2 * n:2]))
    assert torch.equal(torch.cat([y0, y1]).sort().values,
                       data.y_train[:2 * n].sort().values)


def test_bad_input_is_named():
    config = {"widths": [8], "batch_size": 8, "epochs": 1, "lr": 0.1}
    with pytest.raises(ValueError, match="exactly 2 processes"):
        B.training_worker(0, 3, (0,), config)
    with pytest.raises(ValueError, match="lacks"):
        B.training_worker(0, 2, (0,), {"widths": [8]})
    with pytest.raises(ValueError, match="unknown arms"):
        B.training_worker(0, 2, (0,), config, arms=("sync", "allreduce"))


def test_the_stored_measurement_follows_its_rule():
    stored = json.loads(B.DATA_FILE.read_text(encoding="utf-8"))
    prov = stored["provenance"]
    assert prov["command"] == B.COMMAND
    assert prov["seeds"] == list(B.SEEDS)
    assert {"machine", "seconds", "date", "threads_per_process"} <= set(prov)
    # the learning rate is the best on the validation split, from the grid
    selection = stored["lr_selection"]
    assert selection["grid"] == list(B.LR_GRID) and selection["seeds"] == list(B.LR_SEEDS)
    best = int(np.argmax(selection["validation_accuracy"]))
    assert selection["chosen"] == selection["grid"][best]
    assert stored["config"] == {**B.CONFIG, "lr": selection["chosen"]}
    n_test = load_digits_data().x_test.shape[0]
    seeds = len(B.SEEDS)
    for arm in ("shared", "per_domain"):
        a = np.asarray(stored["mixed"][arm])
        assert a.shape == (seeds, 2)
        assert_close(a * n_test / 100, np.round(a * n_test / 100), rtol=0, atol=1e-9,
                     what="accuracies as counts of test digits")
    assert set(stored["accuracy"]) == set(B.ARMS)
    for arm, evaluations in stored["accuracy"].items():
        assert set(evaluations) == set(B.EVALUATIONS)
        for values in evaluations.values():
            a = np.asarray(values)
            assert a.shape == (seeds, 2) and ((a >= 0) & (a <= 100)).all()
        assert len(stored["position"][arm]) == seeds
        per_rank = np.asarray(evaluations["per_rank"])
        assert (per_rank[:, 0] == np.asarray(evaluations["rank0"])[:, 0]).all()
        assert (per_rank[:, 1] == np.asarray(evaluations["rank1"])[:, 1]).all()
    acc = stored["accuracy"]
    assert acc["broadcast"]["rank0"] == acc["local"]["rank0"]
    assert acc["sync"]["rank0"] == acc["sync"]["rank1"] == acc["sync"]["averaged"]
