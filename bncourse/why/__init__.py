"""Why BN helps: each popular claim put to an experiment, with a verdict.

* :mod:`bncourse.why.table`: the verdict table every section records its row in.
* :mod:`bncourse.why.models`: the networks of the chapter (an MLP with a chosen normalization
  after every hidden linear layer, noisy BN, an initial weight scale).
* :mod:`bncourse.why.covariate`: noisy BN and the gradient-based measure of internal covariate
  shift.
* :mod:`bncourse.why.rates`: the learning-rate and initialization-scale sweeps.
* :mod:`bncourse.why.landscape`: the loss landscape along the training trajectory.
* :mod:`bncourse.why.gradients`, :mod:`bncourse.why.regularizer`, :mod:`bncourse.why.rank`,
  :mod:`bncourse.why.alternatives`: gradients at initialization and after, the noise of the
  batch statistics, rank collapse, and what replaces BN.
"""
