"""Exercises of chapter 9, BN in the wild.

``wild.sorted_eval``, ``wild.batch_of_one``, ``wild.domain_bn`` and ``wild.checkpoint_stats``
are predictions, asked before the chapter measures their answer. ``wild.pair_xhat``'s value
and ``wild.last_batch``'s are checked against torch in ``tests/test_wild.py``.
"""

from __future__ import annotations

from .core import ChoiceExercise, Exercise, Mistake, NumberExercise

SORTED_EVAL = ChoiceExercise(
    id="wild.sorted_eval",
    chapter=9,
    title="Trained on class-sorted batches",
    options={
        "a": "both stay high: the network learned the digits either way",
        "b": "the training-mode accuracy on class-sorted batches stays high, the eval-mode "
             "accuracy collapses",
        "c": "the training-mode accuracy collapses, the eval-mode accuracy stays high",
        "d": "both collapse: the network cannot learn from batches of one class",
    },
    answer="b",
    hints=(
        "In training mode every sub-batch is normalized by its own mean: here the mean of one "
        "class. What can the network read from that mean?",
        "In eval mode the statistics are the running averages over all the classes. Do they "
        "carry the label of the example at hand?",
    ),
    mistakes=(
        Mistake("learned_anyway",
                "the network can lean on the batch statistics, which carry the label when a "
                "batch holds one class; the running statistics do not carry it.", "a"),
        Mistake("reversed",
                "training mode normalizes with the batch's statistics, which tell the class of "
                "a sorted batch; it is eval mode that loses them.", "c"),
        Mistake("cannot_learn",
                "the loss falls during training: the batch statistics give the class away, so "
                "training-mode predictions on sorted batches are good.", "d"),
    ),
)

PAIR_XHAT = NumberExercise(
    id="wild.pair_xhat",
    chapter=9,
    title="x_hat in a batch of two",
    value=1.0,
    rtol=1e-6,
    hints=(
        "Call the two values a and b. The batch mean is their midpoint; each sits half their "
        "distance away from it.",
        "The biased variance of two values is the square of half their distance.",
    ),
    mistakes=(
        Mistake("unbiased",
                "that divides by the unbiased standard deviation: training-mode BN normalizes "
                "with the biased batch variance (divide by m = 2).", 2 ** -0.5),
        Mistake("half", "the deviation from the mean is half the distance, and so is the "
                        "standard deviation: their ratio is not one half.", 0.5),
        Mistake("zero", "the two values differ: x_hat is 0 only in a batch of one.", 0.0),
    ),
)

BATCH_OF_ONE = ChoiceExercise(
    id="wild.batch_of_one",
    chapter=9,
    title="Test-batch statistics, one example at a time",
    options={
        "a": "about the same as with batches of 64: each example is normalized by itself",
        "b": "every example gets the same prediction, so the accuracy is the share of one "
             "class in the test set",
        "c": "a little lower than with batches of 64, from the noise of one example's "
             "statistics",
        "d": "better than the training statistics, since the statistics come from the "
             "shifted data itself",
    },
    answer="b",
    hints=(
        "With one example in the batch, what is the batch mean of a channel, and what is left "
        "of x - mean?",
        "The first BN layer's output then no longer depends on the input. What does the rest "
        "of the network see?",
    ),
    mistakes=(
        Mistake("self_normalized",
                "normalizing one example by its own mean leaves x - mean = 0 in every channel: "
                "nothing of the input survives the first BN layer.", "a"),
        Mistake("noisy", "it is worse than noisy: x_hat is exactly 0, so the output is the same "
                         "for every input.", "c"),
        Mistake("adapted", "one example's statistics are its own values: x - mean is 0, and the "
                           "output no longer depends on the input.", "d"),
    ),
)

_N_EXAMPLES, _BATCH = 1000, 37

LAST_BATCH = NumberExercise(
    id="wild.last_batch",
    chapter=9,
    title="The last batch of an epoch",
    value=float(_N_EXAMPLES % _BATCH),
    rtol=0.0,
    atol=1e-9,
    hints=(
        "With drop_last=False, the loader hands out whatever is left after the full batches.",
        "How many full batches of 37 fit in 1000 examples, and how many examples do they use?",
    ),
    mistakes=(
        Mistake("full", "with drop_last=False the last batch holds what is left over, not a full "
                        "batch.", float(_BATCH)),
        Mistake("count", "that is the number of full batches; the question asks for the size of "
                         "the last one.", float(_N_EXAMPLES // _BATCH)),
        Mistake("dropped", "0 is what drop_last=True leaves; here drop_last is False.", 0.0),
    ),
)

_MAP = 2          # height and width of the feature maps
_M_WANTED = 16    # values per channel wanted

TINY_M = NumberExercise(
    id="wild.tiny_m",
    chapter=9,
    title="The smallest batch for enough values per channel",
    value=float(-(-_M_WANTED // (_MAP * _MAP))),
    rtol=0.0,
    atol=1e-9,
    hints=(
        "A BatchNorm2d layer's statistics for one channel average over every image of the "
        "batch and every position of the map.",
        "m = N times the number of positions; solve for the smallest whole N.",
    ),
    mistakes=(
        Mistake("batch_only", "the statistics of BatchNorm2d average over the positions of the "
                              "map too, not over the images alone.", float(_M_WANTED)),
        Mistake("one_side", "a 2x2 map has four positions, not two.", float(_M_WANTED // _MAP)),
    ),
)

INVERSION = ChoiceExercise(
    id="wild.inversion",
    chapter=9,
    title="What AdaBN can undo",
    options={
        "a": "any shift that changes the pixels' mean and spread",
        "b": "a shift that maps every pixel by the same increasing affine map, a x + b with "
             "a > 0, such as the blend with the negative at a weight below one half",
        "c": "a shift that maps every pixel by an affine map, a x + b, with a of either sign, "
             "the full inversion included",
        "d": "none: re-estimated statistics only reduce the error",
    },
    answer="b",
    hints=(
        "The network's first layer is linear and has no bias; the first BN layer follows it. "
        "What does a x + b become after the linear layer?",
        "BN divides by the standard deviation, which is always positive: what happens to the "
        "factor a when a < 0?",
    ),
    mistakes=(
        Mistake("any", "blur and noise change each pixel differently, mixing neighbours or "
                       "adding new variation: no per-channel rescaling undoes them.", "a"),
        Mistake("sign", "the standard deviation is |a| times the old one, so dividing by it "
                        "leaves the sign of a: an inverted input stays inverted.", "c"),
        Mistake("none", "for one kind of shift the re-estimated statistics undo it exactly, "
                        "up to eps.", "d"),
    ),
)

# Sections "Two distributions in one batch" and "Running statistics under DDP": both are
# predictions asked before the reveal; the chapter's cells check the facts behind the answers
# (the first BN's output per domain, and DDP's buffers on two ranks).

DOMAIN_BN = ChoiceExercise(
    id="wild.domain_bn",
    chapter=9,
    title="What a BN per domain does to a contrast and brightness shift",
    options={
        "a": "the same values as for the clean images, up to the effect of eps",
        "b": "the clean images' values times $a$",
        "c": "the clean images' values plus a constant per channel",
        "d": "the clean images' values times $a$, plus a constant per channel",
    },
    answer="a",
    hints=(
        "Write the first linear layer's output for a shifted image, W(a x + b), as an affine "
        "function of its output for the clean image, Wx.",
        "A BN in training mode subtracts the batch mean and divides by the batch standard "
        "deviation, per channel: what is left of a per-channel scale a > 0 and a per-channel "
        "offset after that?",
    ),
    mistakes=(
        Mistake("scale-kept", "the factor a > 0 scales the channel's standard deviation by the "
                              "same a, so dividing by the batch's standard deviation removes "
                              "it.", "b"),
        Mistake("offset-kept", "the offset, W times the brightness, is the same for every example "
                               "of the domain, so it moves the batch mean by exactly as much and "
                               "the subtraction removes it.", "c"),
        Mistake("nothing-removed", "that is the linear layer's output before BN; a BN that sees "
                                   "only this domain's examples removes both the scale and the "
                                   "offset.", "d"),
    ),
)

CHECKPOINT_STATS = ChoiceExercise(
    id="wild.checkpoint_stats",
    chapter=9,
    title="Whose running statistics a DDP checkpoint holds",
    options={
        "a": "the average of the two ranks' running statistics",
        "b": "running statistics of rank 0's data alone",
        "c": "running statistics of the union of both ranks' data",
        "d": "rank 1's running statistics, since rank 1 ran the last forward",
    },
    answer="b",
    hints=(
        "DDP averages the gradients across ranks. Does anything average the buffers?",
        "With the default setting, rank 0 sends its buffers to the other ranks at the start of "
        "every forward; what does rank 0's own copy ever see?",
    ),
    mistakes=(
        Mistake("averaged", "DDP all-reduces gradients, not buffers: nothing averages the "
                            "running statistics unless you do it yourself.", "a"),
        Mistake("union", "the union's statistics would need SyncBN, which normalizes with the "
                         "global batch; plain BN on each rank sees only that rank's batch.", "c"),
        Mistake("last-rank", "the checkpoint is rank 0's state_dict, and the broadcast goes from "
                             "rank 0 to the others, never back.", "d"),
    ),
)


EXERCISES: list[Exercise] = [SORTED_EVAL, PAIR_XHAT, BATCH_OF_ONE, INVERSION, DOMAIN_BN,
                             CHECKPOINT_STATS, LAST_BATCH, TINY_M]

