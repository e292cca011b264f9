"""``infl mislabel``: find the mislabelled training data (Koh & Liang, Section 5.4, Figure 6),
every retrained model certified and every test prediction proven.

For each seed: a fraction ``flip`` of the training labels is set to a uniformly drawn *other*
class; the flipped model is trained (the certified core, :func:`~infl_cli.engines.logreg.retraining.solve_changes`,
from the clean model: the flips are a relabelling of its objective) and the training points
are ranked by each ordering, computed once at the flipped model:

* ``self-influence``: the predicted rise of the point's own loss when it is removed,
  −I_up,loss(z, z)/n (:mod:`~infl_cli.engines.logreg.selfinf`), largest first;
* ``loss``: the training loss, largest first;
* ``random``: a random order;
* ``loo-loss`` (beyond the paper): the predicted leave-one-out loss, training loss +
  predicted own change, i.e. how badly the point would be predicted without itself;
* ``koh``: Koh's variant of self-influence (∇CE on both sides).

For each ordering and check level, the top ``level·n`` points are "checked": the flipped ones
among them get their true labels back, and the model is retrained from the flipped model by
the same certified core (one batch per seed: the curvature does not depend on the labels, so
H(Ŵ_flip) is the exact Newton matrix of every fix at Ŵ_flip). Every retrained model is
certified to ‖∇R‖ ≤ ``tol`` (rounding included); its test loss has a proven error bar, and each
test prediction is proven by its logit margin against the certified distance to the exact
optimum (:func:`~infl_cli.engines.logreg.loo.test_predictions`); a model with unproven predictions is driven
to its float64 floor and tested again, and what stays unproven is counted, never guessed.

Per seed, ``mislabel-seed-<s>.safetensors`` is written when the seed finishes (an interrupted
run continues with the next); at the end ``fig6_mislabel.png``/``.pdf`` (the paper's two
panels, means and standard errors over seeds) and the numbers under ``mislabel`` in
``metrics.json``.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np

from infl_cli.errors import BadInput, Interrupted
from infl_cli.runtime import artifacts as art
from infl_cli.runtime.progress import progress_bar
from infl_cli.stages.common import closed_form_model

ORDERINGS = ("self-influence", "loss", "random", "loo-loss", "koh")
DEFAULT_ORDERINGS = ("self-influence", "loss", "random", "loo-loss")
DEFAULT_CHECKS = (0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3)
FIGURE = "fig6_mislabel.png"


def seed_name(seed: int) -> str:
    return f"mislabel-seed-{seed}.safetensors"


def parse_checks(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise BadInput(f"--checks must be fractions separated by commas, got {text!r}") from None
    return values


def parse_orderings(text: str) -> list[str]:
    names = [v.strip() for v in text.split(",") if v.strip()]
    bad = [v for v in names if v not in ORDERINGS]
    if bad or not names:
        raise BadInput(f"unknown ordering {bad[0] if bad else text!r}; choose from: "
                       f"{', '.join(ORDERINGS)}")
    if len(set(names)) != len(names):
        raise BadInput("--orderings repeat")
    return names


def validate(flip: float, seeds: int, checks: list[float], orderings: list[str]) -> None:
    if not 0 < flip < 1:
        raise BadInput(f"--flip must be in (0, 1), got {flip}")
    if seeds < 1:
        raise BadInput(f"--seeds must be ≥ 1, got {seeds}")
    if not checks:
        raise BadInput("--checks needs at least one fraction")
    if any(not 0 <= c <= 1 for c in checks):
        raise BadInput(f"--checks must lie in [0, 1], got {','.join(f'{c:g}' for c in checks)}")
    if any(b <= a for a, b in zip(checks, checks[1:])):
        raise BadInput(f"--checks must increase, got {','.join(f'{c:g}' for c in checks)}")
    parse_orderings(",".join(orderings))


def flip_labels(y: np.ndarray, classes: int, fraction: float, seed: int):
    """(flipped indices sorted [m], their new labels [m]): m = round(fraction·n) points drawn
    without replacement, each given a uniformly drawn *other* class."""
    rng = np.random.default_rng([seed, 5])
    n = y.shape[0]
    flipped = np.sort(rng.choice(n, size=max(1, round(fraction * n)), replace=False))
    new = (y[flipped] + rng.integers(1, classes, size=flipped.size)) % classes
    return flipped.astype(np.int64), new.astype(np.int64)


def auc(score: np.ndarray, positive: np.ndarray) -> float:
    """ROC AUC of ``score`` against the boolean ``positive`` (ties count one half)."""
    from scipy.stats import rankdata

    ranks = rankdata(score)
    pos = int(positive.sum())
    neg = positive.size - pos
    if pos == 0 or neg == 0:
        return math.nan
    return float((ranks[positive].sum() - pos * (pos + 1) / 2) / (pos * neg))


def _scores(si: dict, rng_seed: int, n: int) -> dict:
    """Each ordering's score (larger: checked first) [n]."""
    rng = np.random.default_rng([rng_seed, 6])
    return {"self-influence": si["predicted_own_change"], "koh": -si["koh"],
            "loss": si["train_loss"], "loo-loss": si["train_loss"] + si["predicted_own_change"],
            "random": rng.permutation(n).astype(np.float64)}


def _evaluate(problem, deltas, grad_bound, results) -> dict:
    """Test loss (with its proven bound) and proven test accuracy of models Ŵ + Δ_j."""
    import torch

    from infl_cli.engines.logreg import loo as loo_mod

    top, proven, _ = loo_mod.test_predictions(problem, deltas, grad_bound)
    correct = (top == problem.y_test[:, None]) & proven
    wrong = (top != problem.y_test[:, None]) & proven
    p = problem.p_test
    loss0 = -torch.log(p[problem.test_rows, problem.y_test])
    t = len(problem.y_test)
    change = torch.as_tensor(results["actual_loss_diff"], device=p.device)
    bound = torch.as_tensor(results["actual_error_bound"], device=p.device)
    loss = (loss0[:, None] + change).mean(0)
    loss_bound = bound.mean(0) + problem.baseline_error.mean() \
        + 8 * 2.0 ** -53 * loss0.abs().mean()
    return {"test_accuracy": (correct.sum(0).double() / t).cpu().numpy(),
            "test_accuracy_upper": ((t - wrong.sum(0)).double() / t).cpu().numpy(),
            "unproven": (~proven).sum(0).cpu().numpy().astype(np.int64),
            "test_loss": loss.cpu().numpy(), "test_loss_bound": loss_bound.cpu().numpy()}


def _solve(problem, changes, tol: float, stats: dict):
    """Certified retraining of ``changes``, then driven to the float64 floor where a test
    prediction is not proven yet; (results, Δ [k, C, d_a], ‖∇R‖ bounds [k], evaluation)."""
    import torch

    from infl_cli.engines.logreg import loo as loo_mod
    from infl_cli.engines.logreg import retraining

    k = len(changes)
    everyone = np.ones((len(problem.y_test), k), dtype=bool)
    settings = loo_mod.LooSettings(rel_error=0.0, tol=tol, max_steps=40)
    results, s = retraining.solve_changes(problem, changes, everyone, settings, keep_deltas=True)
    _count(stats, s)
    deltas = results.pop("deltas")
    upper = results["grad_norm"] + results["grad_rounding"]
    ev = _evaluate(problem, deltas, upper, results)
    again = np.flatnonzero(ev["unproven"] > 0)
    if again.size:  # to the floor: a tiny relative target, stopped by the floor tests
        more = loo_mod.LooSettings(rel_error=1e-12, tol=tol, max_steps=12)
        sub, s = retraining.solve_changes(problem, changes.select(again), everyone[:, again], more,
                                       keep_deltas=True, start=deltas[torch.as_tensor(again)])
        _count(stats, s)
        deltas[torch.as_tensor(again)] = sub.pop("deltas")
        for key in results:
            results[key][..., again] = sub[key]
        upper = results["grad_norm"] + results["grad_rounding"]
        ev = _evaluate(problem, deltas, upper, results)
    return results, deltas, upper, ev


def _count(stats: dict, s: dict) -> None:
    for key in ("float64_passes", "float32_passes"):
        stats[key] = stats.get(key, 0) + int(s.get(key, 0))


def run_seed(tensors, mrec, data, clean_problem, seed: int, flip: float, checks: list[float],
             orderings: list[str], tol: float, sample: int) -> tuple:
    """One seed of the experiment (module doc): (tensors, record) of its artifact."""
    import torch

    from infl_cli.engines.logreg import changes as changes_mod
    from infl_cli.engines.logreg import loo as loo_mod
    from infl_cli.engines.logreg import model, retraining
    from infl_cli.engines.logreg.hessian import HessianFactor
    from infl_cli.stages import selfinfluence

    start = time.perf_counter()
    n, classes, wd = data.n_train, data.n_classes, mrec["settings"]["wd"]
    y = data.train_y
    flipped, new = flip_labels(y, classes, flip, seed)
    is_flipped = np.zeros(n, dtype=bool)
    is_flipped[flipped] = True
    stats, times = {}, {}
    # the flipped model: a relabelling of the clean problem, certified like every other model
    t0 = time.perf_counter()
    out, s = retraining.solve_changes(clean_problem, changes_mod.Changes.relabelings([(flipped, new)]),
                                   np.ones((len(clean_problem.y_test), 1), dtype=bool),
                                   loo_mod.LooSettings(rel_error=0.0, tol=tol,
                                                       max_steps=40), keep_deltas=True)
    _count(stats, s)
    w_flip = clean_problem.weight + out["deltas"][0]  # over the active features
    active = data.design.active.to(w_flip.device)
    w_full = torch.zeros(classes, data.n_features, dtype=torch.float64, device=w_flip.device)
    w_full[:, active] = w_flip
    y_flip = y.copy()
    y_flip[flipped] = new
    y_flip_t = torch.as_tensor(y_flip, device=w_flip.device)
    cert = model.certified_gradient(w_flip, data.design, y_flip_t, wd)
    flip_bound = float(cert.grad.norm()) + cert.bound
    times["flipped model"] = time.perf_counter() - t0
    # the orderings, at the flipped model
    t0 = time.perf_counter()
    with progress_bar(f"seed {seed}: Hessian at the flipped model", total=classes * (classes - 1)
                      // 2) as update:
        factor = HessianFactor(w_flip, data.design, wd, on_block=update)
    from infl_cli.data.dataset import with_labels

    flipped_data = with_labels(data, y_flip, f"{flip:g} flipped, seed {seed}")
    si, si_report = selfinfluence.compute(w_full, mrec, flipped_data, cert, factor, sample,
                                          seed)
    si_np = {k: v.cpu().numpy() for k, v in si.items() if not k.startswith("sample_")}
    scores = _scores(si_np, seed, n)
    times["orderings"] = time.perf_counter() - t0
    # the fixes: one certified batch at the flipped model
    t0 = time.perf_counter()
    levels = [c for c in checks]
    sets, labels = [], []
    fixed = np.zeros((len(orderings), len(levels)), dtype=np.int64)
    for o, name in enumerate(orderings):
        order = np.argsort(-scores[name], kind="stable")
        for li, level in enumerate(levels):
            checked = order[:int(round(level * n))]
            fix = np.sort(checked[is_flipped[checked]])
            fixed[o, li] = fix.size
            if level > 0:
                sets.append((fix, y[fix]))
                labels.append((o, li))
    sets.append((flipped, y[flipped]))  # every flip fixed: must be the clean model
    factor32 = factor.inverted(torch.float32)
    del factor
    problem = loo_mod.LooProblem(w_flip, data.design, y_flip_t, wd, clean_problem.x_test,
                                 clean_problem.y_test, factor=factor32, certificate=cert)
    zero = torch.zeros((1,) + tuple(w_flip.shape), dtype=torch.float64, device=w_flip.device)
    base_eval = _evaluate(problem, zero, np.array([flip_bound]),
                          {"actual_loss_diff": np.zeros((len(problem.y_test), 1)),
                           "actual_error_bound": np.zeros((len(problem.y_test), 1))})
    results, deltas, upper, ev = _solve(problem, changes_mod.Changes.relabelings(sets), tol, stats)
    times["fixes"] = time.perf_counter() - t0
    shape = (len(orderings), len(levels))
    grid = {key: np.zeros(shape) for key in ("test_accuracy", "test_accuracy_upper",
                                             "test_loss", "test_loss_bound", "grad_bound")}
    grid["unproven"] = np.zeros(shape, dtype=np.int64)
    grid["steps"] = np.zeros(shape, dtype=np.int64)
    keys = ("test_accuracy", "test_accuracy_upper", "test_loss", "test_loss_bound", "unproven")
    for o in range(len(orderings)):
        for li, level in enumerate(levels):
            if level == 0:  # nothing checked: the flipped model itself
                for key in keys:
                    grid[key][o, li] = base_eval[key][0]
                grid["grad_bound"][o, li] = flip_bound
    for j, (o, li) in enumerate(labels):
        for key in keys:
            grid[key][o, li] = ev[key][j]
        grid["grad_bound"][o, li] = upper[j]
        grid["steps"][o, li] = results["steps"][j]
    # every flip fixed against the clean model: the two exact optima are the same model
    everything = clean_problem.weight - (w_flip + deltas[-1])
    gap = float(everything.norm())
    clean_radius = float(clean_problem.grad_hat_norm_bound) / wd
    fix_radius = float(upper[-1]) / wd
    tensors_out = {"flipped": torch.from_numpy(flipped), "new_labels": torch.from_numpy(new),
                   "fixed": torch.from_numpy(fixed), "levels": torch.tensor(levels),
                   **{f"score_{name}": torch.from_numpy(np.ascontiguousarray(scores[name]))
                      for name in orderings},
                   **{key: torch.from_numpy(np.ascontiguousarray(value))
                      for key, value in grid.items()},
                   "self_influence": si["self_influence"].cpu(),
                   "train_loss": si["train_loss"].cpu()}
    record = {
        "seed": seed, "n_flipped": int(flipped.size),
        "auc": {name: auc(scores[name], is_flipped) for name in orderings},
        "flipped_model": {"grad_bound": flip_bound, "steps": int(out["steps"][0]),
                          "fallback": bool(out["fallback"][0]), **{
                              k: float(v[0]) if np.ndim(v) else v
                              for k, v in base_eval.items()}},
        "all_fixed_vs_clean": {"distance": gap, "radius_sum": clean_radius + fix_radius,
                               "within": gap <= clean_radius + fix_radius,
                               "test_accuracy": float(ev["test_accuracy"][-1]),
                               "grad_bound": float(upper[-1])},
        "models_certified": int((upper <= tol).sum()) + int(flip_bound <= tol),
        "models": int(len(upper)) + 1,
        "max_grad_bound": float(max(upper.max(), flip_bound)),
        # every model once: the flipped one and each change (the fixes, every flip fixed)
        "unproven_predictions": int(base_eval["unproven"][0]) + int(np.sum(ev["unproven"])),
        "predictions_checked": int(len(problem.y_test) * (len(upper) + 1)),
        "fallbacks": int(results["fallback"].sum()) + int(out["fallback"][0]),
        "self_influence": si_report, "passes": stats, "times": times,
        "seconds": time.perf_counter() - start,
    }
    return tensors_out, record


def clean_accuracy(clean_problem, tol_bound: float) -> dict:
    import torch

    zero = torch.zeros((1,) + tuple(clean_problem.weight.shape), dtype=torch.float64,
                       device=clean_problem.weight.device)
    t = len(clean_problem.y_test)
    ev = _evaluate(clean_problem, zero, np.array([tol_bound]),
                   {"actual_loss_diff": np.zeros((t, 1)), "actual_error_bound": np.zeros((t, 1))})
    return {k: float(v[0]) for k, v in ev.items()}


def run_mislabel(workdir: Path, flip: float, seeds: int, checks: list[float],
                 orderings: list[str], tol: float = 1e-8, sample: int = 60,
                 device=None) -> dict:
    """The experiment (module doc) on the clean model in ``workdir``; returns the metrics."""
    import torch

    from infl_cli.engines.logreg import loo as loo_mod

    validate(flip, seeds, checks, orderings)
    tensors, mrec, data, _, cert = closed_form_model(workdir, "infl mislabel", device)
    settings = {"flip": flip, "checks": list(checks), "orderings": list(orderings), "tol": tol,
                "sample": sample}
    inputs = {"model": mrec["fingerprint"]}
    from infl_cli.engines.logreg.hessian import kept_factor
    from infl_cli.runtime.kept import Keeper

    built = {}

    def clean_problem():
        if "p" not in built:
            keeper = Keeper(workdir, mrec)
            try:
                factor = kept_factor(keeper, tensors["weight"], data.design,
                                     mrec["settings"]["wd"], torch.float32)
            finally:
                keeper.close()
            built["p"] = loo_mod.LooProblem(tensors["weight"], data.design, data.y_train,
                                            mrec["settings"]["wd"], data.x_test, data.y_test,
                                            factor=factor, certificate=cert)
        return built["p"]

    records = []
    start = time.perf_counter()
    try:
        with progress_bar("mislabel: seeds", total=seeds) as update:
            for seed in range(seeds):
                path = workdir / seed_name(seed)
                seed_settings = {**settings, "seed": seed}
                if art.is_current(path, seed_settings, inputs):
                    records.append(art.read_record(path))
                else:
                    out, record = run_seed(tensors, mrec, data, clean_problem(), seed, flip,
                                           checks, orderings, tol, sample)
                    records.append(art.save_artifact(path, out, {
                        "stage": "mislabel-seed", "settings": seed_settings, "inputs": inputs,
                        **record}))
                update(status=f"seed {seed} done")
    except (KeyboardInterrupt, Interrupted):
        raise Interrupted(f"interrupted; {len(records)} of {seeds} seeds are saved in "
                          f"{workdir}; rerun the same command to continue") from None
    grids = [art.load_arrays(workdir / seed_name(s), "mislabel-seed")[0] for s in range(seeds)]
    clean = clean_accuracy(clean_problem(), float(mrec["grad_norm_certified"]))
    metrics = summarise(records, grids, orderings, checks, clean, data.n_train)
    metrics["seconds"] = time.perf_counter() - start
    metrics["settings"] = settings
    metrics["model"] = {key: mrec.get(key) for key in ("settings", "grad_norm_certified",
                                                        "test_accuracy", "n_train")}
    from infl_cli.figures import studies as plot

    metrics["figure"] = str(workdir / FIGURE)
    plot.draw_mislabel(metrics, workdir / FIGURE, art.atomic_write)
    art.update_json(workdir / art.METRICS, "mislabel", metrics)
    return metrics


def summarise(records, grids, orderings, checks, clean: dict, n: int) -> dict:
    """Means and standard errors over seeds, per ordering and check level."""
    def mean_se(values):
        values = np.asarray(values, dtype=float)
        se = values.std(axis=0, ddof=1) / math.sqrt(len(values)) if len(values) > 1 \
            else np.zeros_like(values[0])
        return values.mean(axis=0).tolist(), np.asarray(se).tolist()

    out = {"checks": list(checks), "orderings": list(orderings), "seeds": len(records),
           "clean": clean, "per_ordering": {}}
    n_flipped = np.array([r["n_flipped"] for r in records], dtype=float)
    for o, name in enumerate(orderings):
        entry = {}
        for key in ("test_accuracy", "test_loss"):
            entry[key], entry[f"{key}_se"] = mean_se([g[key][o] for g in grids])
        frac = [g["fixed"][o] / nf for g, nf in zip(grids, n_flipped)]
        entry["fraction_fixed"], entry["fraction_fixed_se"] = mean_se(frac)
        auc_values = [r["auc"][name] for r in records]
        entry["auc"], entry["auc_se"] = mean_se(auc_values)
        entry["test_loss_bound_max"] = float(max(float(np.max(g["test_loss_bound"][o]))
                                                 for g in grids))
        out["per_ordering"][name] = entry
    out["models"] = int(sum(r["models"] for r in records))
    out["models_certified"] = int(sum(r["models_certified"] for r in records))
    out["max_grad_bound"] = float(max(r["max_grad_bound"] for r in records))
    out["unproven_predictions"] = int(sum(r["unproven_predictions"] for r in records))
    out["predictions_checked"] = int(sum(r.get("predictions_checked", 0) for r in records))
    out["all_fixed_equals_clean"] = all(r["all_fixed_vs_clean"]["within"] for r in records)
    out["flipped_test_accuracy"] = mean_se([r["flipped_model"]["test_accuracy"]
                                            for r in records])
    out["seconds_per_seed"] = [r["seconds"] for r in records]
    out["self_influence_sample_proven_relative_max"] = float(max(
        r["self_influence"]["sample_proven_relative_error_max"] for r in records))
    return out
