"""The README's Python example (section "From Python"), run by the tests: your own arrays to a
certified model, exact influence, certified leave-one-out, and another attribution judged on
certified truth. Runs in a few seconds on a CPU; writes into ./work."""

import numpy as np

import infl_cli as infl

rng = np.random.default_rng(0)  # any arrays: embeddings, tabular features, …
X = rng.normal(size=(600, 20))
y = (X @ rng.normal(size=(20, 3)) + rng.gumbel(size=(600, 3))).argmax(1)
data = infl.Dataset.from_arrays(X[:500], y[:500], X[500:], y[500:])

study = infl.Study("work", data)
print(study.train(wd=0.01))                      # trained to a certified optimum
study.ihvp(solver="exact", tests=[0, 1, 2])      # s_test = H⁻¹∇L(z_test), proven error
scores = study.score(solver="exact")             # I_up,loss of all 500 points, [3, 500]
print(study.loo(k=20))                           # 20 retrainings each, every change certified
noisy = scores.predicted_loss_diff + rng.normal(scale=1e-4, size=scores.influence.shape)
print(study.judge(noisy, meaning="removal", name="noisy", subsets=50))
