"""``infl attack``: the paper's training-set attack (Koh & Liang, Section 5.2, Figure 5), every
verdict proven by certified retraining.

For each chosen test point (correctly classified), the ``budget`` training points of largest
|I_up,loss(z, z_test)| are perturbed by projected signed-gradient steps along I_pert,loss, within
an L∞ ball of radius ε in the input's own units (pixels 0..255, clipped to 0..255), the
influence recomputed after each step (:func:`~infl_cli.engines.logreg.attack.attack`). The
model is then retrained on the perturbed training set from Ŵ by the shared certified core (the
perturbed rows are a :class:`~infl_cli.engines.logreg.changes.Changes` of feature swaps), and the
test prediction of the retrained model is proven or not by its logit margin against the
certificate (:func:`~infl_cli.engines.logreg.loo.test_predictions`): *flipped* (proven), *held*
(proven not flipped), or *undecided* (a model is driven to its float64 floor before that is
said). A baseline perturbs the same points by random ±ε signs, judged the same way. The
predicted change of the test loss (the influence of the swap) is set against the actual one.

Writes ``attack.safetensors`` (verdicts, changes, the chosen points, the perturbed rows in
float32), ``attack.png``/``.pdf`` (Figure 5) and the ``attack`` section of ``metrics.json``.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np

from infl_cli.errors import BadInput
from infl_cli.runtime import artifacts as art
from infl_cli.runtime.progress import progress_bar

ARTIFACT = "attack.safetensors"
FIGURE = "attack.png"
PAPER_EPS = 0.5  # ±0.5/255 of the [0, 1] scale (REFERENCE-USES.md): 0.5 in pixel units
PAPER = {"flip_fraction": {1: 0.57, 2: 0.77},
         "setting": "dog vs fish, 900 + 900 training images, Inception features, wd 0.001"}
VERDICTS = {1: "flipped", 0: "held", -1: "undecided"}
TESTS_PER_CHUNK = 50  # test points retrained together (an attack and a baseline each)


def parse_list(text, name: str, kind=float) -> list:
    try:
        values = [kind(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise BadInput(f"{name} must be numbers separated by commas, got {text!r}") from None
    if not values:
        raise BadInput(f"{name} needs at least one value")
    return values


def validate(eps: list[float], budgets: list[int], steps: int) -> None:
    """What can be checked without the model (one line each)."""
    if any(not (e > 0 and math.isfinite(e)) for e in eps):
        raise BadInput(f"--eps must be > 0, got {','.join(f'{e:g}' for e in eps)}")
    if any(b < 1 for b in budgets):
        raise BadInput(f"--budget must be ≥ 1, got {','.join(map(str, budgets))}")
    if len(set(budgets)) != len(budgets) or len(set(eps)) != len(eps):
        raise BadInput("--budget and --eps must not repeat")
    if steps < 1:
        raise BadInput(f"--steps must be ≥ 1, got {steps}")


def check_model(workdir: Path, budgets: list[int]) -> dict:
    """The model record, refused in one line unless it is the logistic model, and the budget
    against its training set."""
    from infl_cli.stages.common import model_policy, model_record

    mrec = model_record(workdir)
    model_policy(mrec).require_closed_form("infl attack", workdir / art.MODEL)
    n = int(mrec["n_train"])
    if max(budgets) > n:
        raise BadInput(f"--budget {max(budgets)} is more than the {n} training points")
    return mrec


def choose_tests(tests, correct: np.ndarray, predicted: np.ndarray, labels: np.ndarray,
                 default: int = 20) -> list[int]:
    """The attacked test points: ``-t`` (each must be correctly classified) or a sample of
    ``--test-sample`` among the correctly classified (default: ``default`` of them)."""
    n_test = correct.shape[0]
    if tests.indices:
        chosen = tests.resolve(n_test, [])
        for t in chosen:
            if not correct[t]:
                raise BadInput(f"test point {t} is already misclassified (predicted "
                               f"{int(predicted[t])}, label {int(labels[t])}); the attack "
                               "flips correctly classified points")
        return chosen
    pool = np.flatnonzero(correct)
    count = default if tests.sample is None else tests.sample
    if not 1 <= count <= pool.size:
        raise BadInput(f"--test-sample must be in 1..{pool.size} (the correctly classified "
                       f"test points), got {count}")
    rng = np.random.default_rng([tests.seed, 34])
    return sorted(int(t) for t in rng.choice(pool, size=count, replace=False))


def run_attack(workdir: Path, tests, budgets: list[int], eps: list[float], steps: int,
               step_size: float | None, seed: int, tol: float, device=None) -> dict:
    """The study (module doc); returns the ``attack`` section of ``metrics.json``."""
    import torch

    from infl_cli.engines.logreg import attack as maths
    from infl_cli.engines.logreg import loo as loo_mod
    from infl_cli.engines.logreg import model
    from infl_cli.engines.logreg.hessian import kept_factor
    from infl_cli.runtime.kept import Keeper
    from infl_cli.stages.common import closed_form_model

    validate(eps, budgets, steps)
    check_model(workdir, budgets)
    start = time.perf_counter()
    tensors, mrec, data, _, cert = closed_form_model(workdir, "infl attack", device)
    wd = mrec["settings"]["wd"]
    weight = tensors["weight"]
    design = data.design
    active = design.active.to(weight.device)
    wa = weight[:, active].contiguous()
    logits = data.x_test @ weight.T
    predicted = logits.argmax(dim=1).cpu().numpy()
    labels = data.y_test.cpu().numpy()
    chosen = choose_tests(tests, predicted == labels, predicted, labels)
    n, t_count = data.n_train, len(chosen)
    keeper = Keeper(workdir, mrec)
    try:
        factor = kept_factor(keeper, weight, design, wd, torch.float32)
    finally:
        keeper.close()
    index_t = torch.as_tensor(chosen)
    problem = loo_mod.LooProblem(weight, design, data.y_train, wd, data.x_test[index_t],
                                 data.y_test[index_t], factor=factor, certificate=cert)
    # s_test at Ŵ to float64 accuracy: the float32 inverse, refined twice on exact products
    g = maths.test_gradient(wa, problem.x_test, problem.y_test)
    v = factor.solve(g)
    for _ in range(2):
        v = v + factor.solve(g - model.hvp(wa, design, wd, v, probs=problem.p0))
    influence = maths.influence_on_loss(wa, design, problem.y, wd, v)  # [T, n]
    b_max = max(budgets)
    train_index = influence.abs().argsort(dim=1, descending=True)[:, :b_max]  # [T, B]
    scale = data.pixel_scale or 1.0
    unit = 1.0 / scale
    lower, upper = (0.0, 255.0) if data.pixel_scale else (None, None)
    rows = design.rows(train_index.reshape(-1).cpu().numpy()).to(weight.device)
    x0_all = rows.reshape(t_count, b_max, -1) * scale
    if data.pixel_scale:
        x0_all = x0_all.round()  # the stored integers exactly
    y0_all = problem.y[train_index]
    mask = torch.ones(wa.shape[1], dtype=torch.bool, device=weight.device)
    if data.bias:
        mask[-1] = False  # the constant feature is not an input
    settings = loo_mod.LooSettings(rel_error=0.0, tol=tol, max_steps=40)
    e_count, b_count = len(eps), len(budgets)
    verdict = torch.full((e_count, b_count, 2, t_count), -1, dtype=torch.int8)
    actual = torch.full((e_count, b_count, 2, t_count), math.nan, dtype=torch.float64)
    bound = torch.full_like(actual, math.nan)
    margin = torch.full_like(actual, math.nan)
    grad_bound = torch.full_like(actual, math.nan)
    retrained = torch.full((e_count, b_count, 2, t_count), -1, dtype=torch.int64)
    predicted_change = torch.full((e_count, b_count, t_count), math.nan, dtype=torch.float64)
    perturbed = torch.zeros((e_count, b_count, t_count, b_max, wa.shape[1]), dtype=torch.float32)
    stats = {"float64_passes": 0, "float32_passes": 0, "fallbacks": 0, "driven_to_floor": 0}
    times = {"attack": 0.0, "retraining": 0.0}
    with progress_bar("attack: ε × budget", total=e_count * b_count) as update:
        for e, radius in enumerate(eps):
            alpha = step_size * radius if step_size else 2.5 * radius / steps
            for b, budget in enumerate(budgets):
                t0 = time.perf_counter()
                x0, y0 = x0_all[:, :budget], y0_all[:, :budget]
                x1 = maths.attack(wa, factor.solve, n, problem.x_test, problem.y_test, x0, y0,
                                  eps=radius, unit=unit, lower=lower, upper=upper, mask=mask,
                                  steps=steps, step_size=alpha)
                base = maths.random_signs(x0, eps=radius, lower=lower, upper=upper, mask=mask,
                                          seed=seed * 1000 + e * 10 + b)
                perturbed[e, b, :, :budget] = x1.to(torch.float32).cpu()
                predicted_change[e, b] = maths.predicted_change(
                    wa, v, x0 * unit, x1 * unit, y0, n).cpu()
                times["attack"] += time.perf_counter() - t0
                t0 = time.perf_counter()
                idx = train_index[:, :budget].cpu().numpy()
                for lo in range(0, t_count, TESTS_PER_CHUNK):  # bounded memory: chunks
                    hi = min(lo + TESTS_PER_CHUNK, t_count)
                    changes = (_swaps(idx[lo:hi], x1[lo:hi] * unit)
                               + _swaps(idx[lo:hi], base[lo:hi] * unit))
                    owner = np.tile(np.arange(lo, hi), 2)
                    out = _judge(problem, changes, owner, settings, stats)
                    for key, target in (("verdict", verdict), ("actual", actual),
                                        ("bound", bound), ("margin", margin),
                                        ("grad_bound", grad_bound),
                                        ("retrained_class", retrained)):
                        target[e, b, :, lo:hi] = torch.as_tensor(out[key]).reshape(2, hi - lo)
                times["retraining"] += time.perf_counter() - t0
                update(status=f"ε {radius:g}, budget {budget}")
    record = summarise(eps, budgets, verdict, actual, bound, predicted_change, grad_bound, tol)
    record.update(test_indices=chosen, n_train=n, n_test_correct=int((predicted == labels).sum()),
                  classes=data.n_classes, model={k: mrec.get(k) for k in (
                      "settings", "grad_norm_certified", "test_accuracy", "n_train")},
                  passes=stats, times=times, paper=PAPER, paper_eps=PAPER_EPS,
                  seconds=time.perf_counter() - start,
                  settings={"budgets": budgets, "eps": eps, "steps": steps,
                            "step_size": step_size, "seed": seed, "tol": tol,
                            "units": "pixels 0..255" if data.pixel_scale else "features",
                            "choice": "largest |I_up,loss(z, z_test)|"})
    out_tensors = {"verdict": verdict, "actual_loss_diff": actual, "actual_error_bound": bound,
                   "margin": margin, "grad_bound": grad_bound, "retrained_class": retrained,
                   "predicted_loss_diff": predicted_change, "train_index": train_index.cpu(),
                   "perturbed": perturbed, "original": x0_all.to(torch.float32).cpu(),
                   "test_index": torch.as_tensor(chosen)}
    saved = art.save_artifact(workdir / ARTIFACT, out_tensors, {
        "stage": "attack", "inputs": {"model": mrec["fingerprint"]}, **record})
    from infl_cli.figures import attack as plot

    png = workdir / FIGURE
    record["figure"] = plot.draw_attack(saved, out_tensors, data, design.active.cpu().numpy(),
                                        png, art.atomic_write)
    art.update_json(workdir / art.METRICS, "attack", record)
    return record


def _swaps(index: np.ndarray, rows) -> list:
    """One change per test point: its rows ``index[t]`` [B] get ``rows[t]`` [B, d_a]."""
    return [(index[t], rows[t].cpu().numpy()) for t in range(index.shape[0])]


def _judge(problem, sets: list, owner: np.ndarray, settings, stats: dict) -> dict:
    """Retrain each swap (change j attacks the problem's test point ``owner[j]``), certified;
    driven to the float64 floor where its prediction is not proven yet. Per change: verdict
    (1 flipped, 0 held, −1 undecided), actual test-loss change and its bound, margin, ‖∇R‖
    bound, the retrained model's class."""
    import torch

    from infl_cli.engines.logreg import loo as loo_mod
    from infl_cli.engines.logreg import retraining
    from infl_cli.engines.logreg.changes import Changes

    changes = Changes.perturbations(sets)
    k = len(changes)
    selected = np.zeros((len(problem.y_test), k), dtype=bool)
    selected[owner, np.arange(k)] = True
    results, s = retraining.solve_changes(problem, changes, selected, settings, keep_deltas=True)
    _count(stats, s, results)
    deltas = results.pop("deltas")
    upper = results["grad_norm"] + results["grad_rounding"]
    out = _verdicts(problem, deltas, upper, owner)
    again = np.flatnonzero(out["verdict"] == -1)
    if again.size:
        more = loo_mod.LooSettings(rel_error=1e-12, tol=settings.tol, max_steps=12)
        sub, s = retraining.solve_changes(problem, changes.select(again), selected[:, again],
                                          more, keep_deltas=True,
                                          start=deltas[torch.as_tensor(again)])
        _count(stats, s, sub)
        stats["driven_to_floor"] += int(again.size)
        deltas[torch.as_tensor(again)] = sub.pop("deltas")
        for key in results:
            results[key][..., again] = sub[key]
        upper = results["grad_norm"] + results["grad_rounding"]
        out = _verdicts(problem, deltas, upper, owner)
    cols = np.arange(k)
    out["actual"] = results["actual_loss_diff"][owner, cols]
    out["bound"] = results["actual_error_bound"][owner, cols]
    out["grad_bound"] = upper
    return out


def _verdicts(problem, deltas, upper, owner: np.ndarray) -> dict:
    from infl_cli.engines.logreg import loo as loo_mod

    top, proven, margin = loo_mod.test_predictions(problem, deltas, upper)
    cols = np.arange(len(owner))
    top, proven = top.cpu().numpy()[owner, cols], proven.cpu().numpy()[owner, cols]
    original = problem.y_test.cpu().numpy()[owner]  # correctly classified: the label
    verdict = np.where(proven, np.where(top != original, 1, 0), -1).astype(np.int8)
    return {"verdict": verdict, "margin": margin.cpu().numpy()[owner, cols],
            "retrained_class": top.astype(np.int64)}


def _count(stats: dict, s: dict, results: dict) -> None:
    for key in ("float64_passes", "float32_passes"):
        stats[key] += int(s.get(key, 0))
    stats["fallbacks"] += int(np.sum(results["fallback"]))


def summarise(eps, budgets, verdict, actual, bound, predicted, grad_bound, tol) -> dict:
    """The table: per ε and budget, the fractions flipped (proven), held and undecided, for the
    attack and the baseline; the smallest ε (of those run) at which half flip; predicted
    against actual test-loss change of the attacks."""
    from infl_cli.figures.fig2 import agreement

    v = verdict.numpy()
    table = []
    for e, radius in enumerate(eps):
        for b, budget in enumerate(budgets):
            row = {"eps": radius, "budget": budget}
            for w, who in enumerate(("attack", "baseline")):
                for code, name in VERDICTS.items():
                    row[f"{who}_{name}"] = float(np.mean(v[e, b, w] == code))
            table.append(row)
    half = {}
    for b, budget in enumerate(budgets):
        hit = [radius for e, radius in enumerate(eps) if np.mean(v[e, b, 0] == 1) >= 0.5]
        half[str(budget)] = min(hit) if hit else None
    a = actual[:, :, 0].numpy().reshape(-1)
    p = predicted.numpy().reshape(-1)
    ok = np.isfinite(a) & np.isfinite(p)
    return {"table": table, "half_flip_eps": half,
            "agreement": agreement(a[ok], p[ok]),
            "undecided": int((v == -1).sum()), "verdicts": int(v.size),
            "max_grad_bound": float(np.nanmax(grad_bound.numpy())),
            "models_certified": int((grad_bound.numpy() <= tol).sum()),
            "max_actual_error_bound": float(np.nanmax(bound.numpy()))}
