"""``infl self-influence``: every training point's influence on its own loss, the points whose
labels to check first, and (``--check K``) the truth of the K largest by certified LOO.

Writes ``self-influence.safetensors``: ``self_influence`` [n] (I_up,loss(z_i, z_i) =
−∇CE(z_i)ᵀH⁻¹∇L(z_i)), ``predicted_own_change`` [n] (−I/n: the predicted change of z_i's own
loss when it is removed), ``koh`` [n] (Koh's variant, ∇CE on both sides), ``train_loss`` [n],
``predicted_class`` [n] and ``predicted_probability`` [n], and the certified sample
(:func:`~infl_cli.engines.logreg.selfinf.certified_sample`). With ``--check K``: ``self-loo.safetensors``
(the actual change of each of the K points' own loss when it is removed, certified like
``loo``) and ``fig_self_influence.png``/``.pdf``.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np

from infl_cli.errors import BadInput, InflError, Interrupted
from infl_cli.runtime import artifacts as art
from infl_cli.runtime.progress import progress_bar
from infl_cli.stages.common import closed_form_model, model_engine

ARTIFACT = "self-influence.safetensors"
CHECK = "self-loo.safetensors"
CHECK_PARTIAL = "self-loo.partial.safetensors"
FIGURE = "fig_self_influence.png"
ORDERS = ("self-influence", "koh", "loss", "loo-loss")


def validate(sample: int, check: int, count: int, order: str) -> None:
    if sample < 2:
        raise BadInput(f"--sample must be ≥ 2 (points certified independently), got {sample}")
    if check < 0:
        raise BadInput(f"--check must be ≥ 0 (0: no LOO truth check), got {check}")
    if count < 1:
        raise BadInput(f"-n must be ≥ 1, got {count}")
    if order not in ORDERS:
        raise BadInput(f"unknown order {order!r}; choose one of: {', '.join(ORDERS)}")


def rank_key(arrays: dict, order: str) -> np.ndarray:
    """The value each training point is ranked by, largest first: the predicted rise of its
    own loss when it is removed (−I/n: a negative self-influence I_up,loss(z, z) is a rise,
    so "the largest" are its most negative values), Koh's variant (−I_koh), the training
    loss, or the predicted leave-one-out loss (training loss + predicted own change)."""
    return np.asarray({"self-influence": arrays["predicted_own_change"], "koh": -arrays["koh"],
                       "loss": arrays["train_loss"],
                       "loo-loss": arrays["train_loss"] + arrays["predicted_own_change"]}[order])


def ranking(arrays: dict, order: str) -> np.ndarray:
    """Training indices, the labels to check first first (:func:`rank_key`)."""
    return np.argsort(-rank_key(arrays, order), kind="stable")


def compute(weight, mrec: dict, data, cert, factor, sample: int, seed: int = 0) -> tuple:
    """(tensors, report) of the self-influence of ``data``'s training points at ``weight``
    with the float64 Cholesky ``factor`` of H(Ŵ) and training's certificate ``cert``; a
    sample (the largest half by predicted own change, the rest drawn with ``seed``) is
    certified independently."""
    import torch

    from infl_cli.engines.logreg import selfinf

    start = time.perf_counter()
    wd = mrec["settings"]["wd"]
    with progress_bar("self-influence: quadratic forms", total=1) as update:
        # the inverse is passed as its only reference: freed as soon as it is used
        fast = selfinf.self_influence(weight, data.design, data.y_train, wd,
                                      torch.cholesky_inverse(factor.chol), cert.probs)
        update()
    n = data.n_train
    top = torch.topk(fast["predicted_own_change"], min(n, sample // 2)).indices.cpu().numpy()
    rest = np.setdiff1d(np.arange(n), top)
    rng = np.random.default_rng([seed, 4])
    drawn = rng.choice(rest, size=min(rest.size, sample - top.size), replace=False)
    chosen = np.concatenate([top, np.sort(drawn)])
    check = selfinf.certified_sample(weight, data.design, data.y_train, wd, factor, cert,
                                     chosen, fast)
    probs = cert.probs
    tensors = {key: fast[key] for key in ("self_influence", "koh", "predicted_own_change",
                                          "train_loss")}
    tensors["predicted_class"] = probs.argmax(1)
    tensors["predicted_probability"] = probs.max(1).values
    tensors["label_probability"] = probs[torch.arange(n, device=probs.device), data.y_train]
    tensors.update({f"sample_{key}": value for key, value in check.items()})
    report = {
        "sample": int(len(chosen)),
        "sample_measured_relative_error_max": _max_rel(check["self_influence_measured_error"],
                                                       check["self_influence_reference"]),
        "sample_proven_relative_error_max": float(check["self_influence_proven_relative"]
                                                  .max()),
        "sample_koh_proven_relative_error_max": float(check["koh_proven_relative"].max()),
        "seconds": time.perf_counter() - start,
    }
    return tensors, report


def _max_rel(error, reference) -> float:
    return float((error / reference.abs().clamp_min(1e-300)).max())


def run_self_influence(workdir: Path, sample: int = 60, check: int = 0, seed: int = 0,
                       device=None, rel_error: float = 0.01) -> dict:
    """Compute (or reuse, when current) the self-influence artifact; with ``check`` > 0 the
    certified LOO truth check of the ``check`` largest. Returns the record (with the check's
    metrics under ``check``)."""
    import torch

    from infl_cli.engines.logreg.hessian import kept_factor
    from infl_cli.runtime import device as device_mod
    from infl_cli.runtime.kept import Keeper

    validate(sample, check, 1, "self-influence")
    tensors, mrec, data, _, cert = closed_form_model(workdir, "self-influence", device)
    path = workdir / ARTIFACT
    settings = {"sample": sample, "seed": seed}
    inputs = {"model": mrec["fingerprint"]}
    if art.is_current(path, settings, inputs):
        record = art.read_record(path)
    else:
        model_engine(mrec).check_memory("self-influence", data, "infl self-influence")
        keeper = Keeper(workdir, mrec)
        try:
            factor = kept_factor(keeper, tensors["weight"], data.design,
                                 mrec["settings"]["wd"], torch.float64)
        finally:
            keeper.close()
        out, report = compute(tensors["weight"], mrec, data, cert, factor, sample, seed)
        report["hessian_factor"] = keeper.used.get("torch.float64")
        record = art.save_artifact(path, out, {
            "stage": "self-influence", "settings": settings, "inputs": inputs,
            "device": device_mod.describe(data.device), "n_train": data.n_train, **report})
    if check:
        record["check"] = run_check(workdir, mrec, tensors, data, check, rel_error)
    return record


def run_check(workdir: Path, mrec: dict, tensors: dict, data, k: int, rel_error: float) -> dict:
    """Remove each of the ``k`` points of largest self-influence and retrain (the LOO core,
    certified to ``rel_error`` of each actual change), the removed point its own test point;
    write ``self-loo.safetensors`` and the Figure-2-style panel; return its metrics."""
    import torch

    from infl_cli.engines.logreg import loo as loo_mod
    from infl_cli.engines.logreg.engine import ENGINE
    from infl_cli.figures import studies as plot
    from infl_cli.runtime import chunks
    from infl_cli.runtime.kept import Keeper
    from infl_cli.stages.loo import LooJob

    arrays, srec = art.load_arrays(workdir / ARTIFACT, "self-influence")
    k = min(k, data.n_train)
    chosen = ranking(arrays, "self-influence")[:k].astype(np.int64)
    settings = loo_mod.LooSettings(rel_error=rel_error)
    record_settings = {"k": k, "rel_error": rel_error, "tol": settings.tol,
                       "chunk_size": settings.chunk_size}
    inputs = {"model": mrec["fingerprint"], "self_influence": srec["fingerprint"]}
    path = workdir / CHECK
    if not art.is_current(path, record_settings, inputs):
        store = chunks.PartialResults(workdir / CHECK_PARTIAL, chosen, chosen,
                                      np.eye(k, dtype=bool), settings.chunk_size,
                                      record_settings, inputs)
        start = time.perf_counter()
        built = {}
        try:
            with progress_bar("self-influence check: removals", total=k) as update:
                update(advance=store.n_done)
                if store.pending():
                    keeper = Keeper(workdir, mrec)
                    index = torch.as_tensor(chosen, device=data.device)
                    with progress_bar("check: set-up",
                                      total=ENGINE.hessian_blocks(tensors)) as blocks:
                        built["problem"] = ENGINE.loo_problem(
                            tensors, mrec, data, data.x_train[index], data.y_train[index],
                            settings, on_block=blocks, keeper=keeper)
                    try:
                        chunks.run_in_process(built["problem"], store, LooJob(settings),
                                              update)
                    finally:
                        keeper.close()
        except (KeyboardInterrupt, Interrupted):
            raise Interrupted(f"interrupted; {store.n_done} of {k} removals are saved in "
                              f"{store.path}; rerun the same command to continue") from None
        a = store.arrays
        diag = np.arange(k)
        record = {"stage": "self-loo", "settings": record_settings, "inputs": inputs,
                  "certified": int(((a["grad_norm"] + a["grad_rounding"]) <= settings.tol)
                                   .sum()),
                  "seconds": time.perf_counter() - start,
                  "within_target": int((a["actual_error_bound"][diag, diag] <= rel_error * np.abs(
                      a["actual_loss_diff"][diag, diag])).sum())}
        out = {"train_indices": torch.from_numpy(chosen),
               "actual_own_change": torch.from_numpy(a["actual_loss_diff"][diag, diag].copy()),
               "actual_error_bound": torch.from_numpy(a["actual_error_bound"][diag, diag].copy()),
               "grad_norm": torch.from_numpy(a["grad_norm"]),
               "grad_rounding": torch.from_numpy(a["grad_rounding"])}
        art.save_artifact(path, out, record)
        store.discard()
    checked, crec = art.load_arrays(path, "self-loo")
    predicted = arrays["predicted_own_change"][checked["train_indices"]]
    metrics = plot.draw_self_check(checked["actual_own_change"], checked["actual_error_bound"],
                                   predicted, workdir / FIGURE, art.atomic_write)
    metrics.update(certified=crec["certified"], within_target=crec["within_target"], k=k,
                   largest_error_bound=float(np.max(checked["actual_error_bound"])),
                   seconds=crec["seconds"])
    return metrics


def top_rows(workdir: Path, count: int, order: str) -> tuple:
    """(rows, record) of the ``count`` training points to check first: index, given label,
    predicted class and its probability, p(given label), self-influence, predicted own
    change, training loss (NumPy, no torch)."""
    path = workdir / ARTIFACT
    arrays, record = art.load_arrays(path, "self-influence", hint="infl self-influence")
    mrec = art.read_record(workdir / art.MODEL)
    if record["inputs"]["model"] != mrec["fingerprint"]:
        raise InflError(f"{path} was computed for another model than {art.MODEL}; rerun "
                        "`infl self-influence`")
    from infl_cli.stages.common import model_dataset

    data = model_dataset(mrec)
    rows = []
    key = rank_key(arrays, order)
    for rank, i in enumerate(ranking(arrays, order)[:count], start=1):
        i = int(i)
        label, pred = int(data.train_y[i]), int(arrays["predicted_class"][i])
        rows.append({"rank": rank, "train_index": i, "label": label,
                     "label_name": data.class_name(label), "predicted": pred,
                     "predicted_name": data.class_name(pred),
                     "predicted_probability": float(arrays["predicted_probability"][i]),
                     "label_probability": float(arrays["label_probability"][i]),
                     "self_influence": float(arrays["self_influence"][i]),
                     "predicted_own_change": float(arrays["predicted_own_change"][i]),
                     "train_loss": float(arrays["train_loss"][i]),
                     "ranked_by": float(key[i])})
    return rows, record, data


def draw_top(workdir: Path, rows: list, data, order: str, out: Path | None) -> Path | None:
    """The images of the points to check first (where the features are square images)."""
    if data.image_shape is None:
        return None
    from infl_cli.figures import studies as plot

    png = Path(out) if out else workdir / "self-influence.png"
    if png.suffix.lower() != ".png":
        raise BadInput(f"--out must end in .png, got {png}")
    plot.draw_check_first(data, rows, order, png, art.atomic_write)
    return png


def nan_to_none(value):
    return None if isinstance(value, float) and math.isnan(value) else value
