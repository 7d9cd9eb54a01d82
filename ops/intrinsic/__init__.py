"""Intrinsic dimension (``surgeon intrinsic-dim``) and subspace files (``surgeon expand-subspace``).

plan.py         plan_intrinsic_dim: the settings' clashes, the outputs, the task, the model, the Problem
run.py          run_intrinsic_dim: the search, the subspace file, the plot; IntrinsicDimResult (the JSON)
expand.py       plan_expand / run_expand: a subspace file back into a full checkpoint; ExpandResult
tasks/          the task registry and one class per kind of data (toy, features, tokens, text, LM, module)
models.py       the built-in networks, transformers checkpoints, a module's model; how to rebuild theta_0
problem.py      Problem: the D trained parameters as one flat vector, theta_0, the functional forward
train.py        one training run, in a subspace of dimension d or directly (the baseline)
search.py       measure: the baseline and the search for d_int; Measurement
subspace.py     the subspace file: save, read, rebuild theta_0, expand theta_0 + P theta_d
projections.py  the random projections P (dense, sparse, fastfood), nested across d
fwht.py         the fast Walsh-Hadamard transform (the reference of kernels/fwht.py)
plot.py         the PNG of the metric against d
"""
