"""The tables each command prints on stdout, or the records it prints as JSON with ``--json``
(:mod:`~infl_cli.cli.output`; rich only: no torch)."""

from __future__ import annotations

from rich.table import Table

from infl_cli.cli import output


def fmt(value) -> str:
    """A value as a table shows it; a figure that is not a number says so in words."""
    if isinstance(value, float):
        if value != value:
            return "undefined"
        if value in (float("inf"), float("-inf")):
            return "infinite"
        return f"{value:.6g}"
    if value is None:
        return "–"
    return str(value)


def figure(m: dict, key: str) -> str:
    """A figure of an agreement (R, ρ, slope): its value, or why it is undefined."""
    value = m.get(key)
    if isinstance(value, float) and value == value:
        return f"{value:.6g}"
    return f"undefined ({m.get('undefined', 'no value')})"


def table(title: str, rows: dict) -> None:
    table = Table(title=title, show_header=False)
    table.add_column(overflow="fold")
    table.add_column(overflow="fold")  # a long path wraps, never cut to "…"
    for key, value in rows.items():
        table.add_row(key, fmt(value))
    output.console().print(table)


def columns(title: str, header: list, rows: list) -> None:
    table = Table(title=title)
    for name in header:
        table.add_column(name, overflow="fold")
    for row in rows:
        table.add_row(*[fmt(v) for v in row])
    output.console().print(table)


def listing(values, fmt: str = "{:.2e}") -> str:
    """All values when there are few, else the median and the largest."""
    values = list(values)
    if len(values) <= 6:
        return ", ".join(fmt.format(v) for v in values)
    ordered = sorted(values)
    return f"median {fmt.format(ordered[len(ordered) // 2])}, max {fmt.format(ordered[-1])}"


def _train(rec):
    spec = rec["settings"].get("model", {"kind": "logreg"})
    rows = {"dataset": rec["settings"]["dataset"]
            + (" (+ bias feature)" if rec["settings"].get("bias") else ""),
            "model": rec.get("model", "multinomial logistic regression"),
            "n_train": rec["n_train"]}
    if spec["kind"] == "logreg":
        rows["classes × features"] = f"{rec.get('n_classes', 10)} × {rec.get('n_features', 784)}"
    if spec["kind"] == "svm":
        rows.update({"objective P(w) (exact, rounded)": rec["train_loss"],
                     "duality gap (exact, rounded up)": rec["duality_gap"],
                     "‖w − w*‖ ≤ √(2·gap/wd)": rec["radius"],
                     "free / bounded support vectors":
                         f"{rec['free_support_vectors']} / {rec['bounded_support_vectors']}",
                     "dual coordinate ascent: rounds, sweeps":
                         f"{rec['dual_rounds']}, {rec['dual_sweeps']}",
                     "influence at temperature": rec["temperature"]})
    else:
        rows.update({"train loss": rec["train_loss"], "‖∇R‖ (float64)": rec["grad_norm"]})
    if spec["kind"] == "smooth-hinge":
        rows.update({"‖∇R‖ ≤ (certified, rounding included)": rec["grad_bound"],
                     "‖w − w*‖ ≤": rec["radius"], "Newton steps": rec["newton_steps"],
                     "temperature": rec["temperature"]})
    elif spec["kind"] == "logreg":
        rows.update({"‖∇R‖ ≤ (certified)": rec.get("grad_norm_certified", "–"),
                     "rounding model": rec.get("rounding_model", "–"),
                     "floor: rounding bound of ‖∇R‖": rec.get("grad_rounding", "–"),
                     "L-BFGS iterations": rec["lbfgs_iterations"],
                     "Newton iterations": rec["newton_iterations"]})
    elif spec["kind"] == "cnn":
        rows.update({"Adam steps": rec["adam_steps"], "Newton steps": rec.get("newton_steps", "–")})
        if "lambda_min" in rec:
            rows.update({"λ_min(H) (computed)": rec["lambda_min"],
                         "λ_max(H) (computed)": rec["lambda_max"],
                         "negative eigenvalues": rec["negative_eigenvalues"],
                         "local minimum": "yes (‖∇R‖ ≤ tol, λ_min > 0)"
                         if rec.get("local_minimum") else
                         "no claim (‖∇R‖ above tol)" if not rec.get("converged", True) else
                         "no claim (λ_min ≤ 0)"})
    rows.update({"train accuracy": rec["train_accuracy"], "test accuracy": rec["test_accuracy"],
                 "device": rec.get("device", "cpu"), "seconds": rec["seconds"]})
    table("train", rows)


def _ihvp(rec):
    r = rec["report"]
    tests = rec["settings"]["test_indices"]
    table(f"ihvp ({rec['settings']['solver']})", {
        **({"test index" if len(tests) == 1 else "test indices": ", ".join(map(str, tests))}
           if len(tests) <= 6 else {"test points": len(tests)}),
        "relative residual ‖Hs−g‖/‖g‖": listing(r["relative_residual"]),
        ("relative error ‖s−s*‖/‖s*‖ ≤ (proven: λ_min ≥ wd)"
         if r.get("error_bound_certified", True) else
         "relative error ‖s−s*‖/‖s*‖ (estimate: computed λ_min)"):
            listing(r["error_bound_relative"]),
        "iterations": r["iterations"], "HVPs": r["hvps"], "seconds": r["seconds"],
        "device": rec.get("device", "cpu"),
        **({"scale": r["scale_used"], "steps per repeat": r["steps_per_repeat"],
            "stopped early": r["stopped_early"]} if "scale_used" in r else {}),
        **({"preconditioner seconds": r["preconditioner_seconds"]}
           if "preconditioner_seconds" in r else {})})


def _score(rec):
    tests = rec["settings"]["test_indices"]
    table(f"score ({rec['settings']['solver']})", {
        **({"test index" if len(tests) == 1 else "test indices": ", ".join(map(str, tests))}
           if len(tests) <= 6 else {"test points": len(tests)}),
        "n_train": rec["n_train"], "seconds": rec["seconds"], "device": rec.get("device", "cpu")})


def _loo(rec):
    s = rec["settings"]
    tests = rec["test_indices"]
    kind = rec.get("error_kind", "certified")
    rows = {
        **({"test index" if len(tests) == 1 else "test indices": ", ".join(map(str, tests))}
           if len(tests) <= 6 else {"test points": len(tests)}),
        "selection": s["select"] + ("" if s["k"] is None else f", k = {s['k']}"),
        "removals (union)": rec["n_removals"], "method": s["method"],
    }
    if kind == "certified":
        rows.update({f"certified ‖∇R₋z‖ ≤ {s['tol']:g}": f"{rec['certified']} of {rec['n_removals']}",
                     "max ‖∇R₋z‖ (proven bound)": rec["max_grad_norm_bound"]})
        if s["rel_error"] > 0:
            rows[f"error bound ≤ {s['rel_error']:g}·|change|"] = \
                f"{rec['pairs_within_target']} of {rec['pairs_selected']} pairs"
        rows.update({
            "worst error bound / |change|": rec["worst_bound_ratio"]
            if rec["worst_bound_ratio"] not in (None, float("inf")) else
            "infinite: an actual change is exactly 0 (its bound is not)",
            "largest error bound (certified)": rec["max_error_bound"],
            "baseline error, from Ŵ": listing(rec["baseline_error"] or []),
            "Newton-CG fallbacks": rec["fallbacks"],
            "float64 passes (certifying)": rec["float64_passes"],
            "float32 correction passes": rec["float32_passes"]})
    else:
        rows[f"‖∇R₋z‖ ≤ {s['tol']:g} (float64, not a proof)"] = \
            f"{rec['certified']} of {rec['n_removals']}"
        rows["max ‖∇R₋z‖ (float64)"] = rec["max_grad_norm"]
        if kind == "estimate":
            rows.update({
                "smallest λ_min of the last Newton matrices (computed)":
                    rec.get("lambda_min_smallest", "–"),
                "every Newton matrix positive definite":
                    rec.get("all_newton_matrices_positive_definite", "–"),
                "largest error estimate (first order)": rec["max_error_bound"],
                "Levenberg–Marquardt Newton fallbacks (R₋z's own Hessian)": rec["fallbacks"]})
        else:
            rows["Adam steps per retraining"] = s.get("retrain_steps", "–")
    rows.update({
        "workers": rec["workers"] if not rec.get("cluster") else
        f"{rec['workers']} ({rec['cluster']}; scatter {rec['scatter_seconds']:.1f} s)",
        "removals per second": rec["removals_per_second"] or "–",
        "device": rec.get("device", "cpu") + (f", peak {rec['peak_device_gib']:.1f} GiB"
                                             if rec.get("peak_device_gib") else ""),
        "set-up seconds" if kind != "certified" else "Hessian seconds": rec["factor_seconds"],
        "seconds": rec["seconds"]})
    table("loo", rows)
    if kind == "certified" and rec["below_target"]:
        columns(f"removals whose bound stays above {s['rel_error']:g}·|change| (at the float64 "
                 "floor)", ["test", "train index", "actual change", "error bound"],
                 [(b["test_index"], b["train_index"], b["actual_change"], b["error_bound"])
                  for b in rec["below_target"]])


def _plot(metrics):
    for solver, m in metrics["panels"].items():
        rows = {"Pearson R": figure(m, "pearson_r"), "Spearman ρ": figure(m, "spearman_rho"),
                "slope (predicted ≈ slope × actual)": figure(m, "slope"),
                "intercept": figure(m, "intercept"), "pairs": m["k"]}
        if len(m["per_test"]) > 1:
            rows.update({"median R over test points": m["median_pearson_r"],
                         "worst R": f"{m['worst_pearson_r']:.6g} (test {m['worst_test_index']})",
                         "median ρ": m["median_spearman_rho"], "worst ρ": m["worst_spearman_rho"]})
        rows["figure"] = metrics["figure"] + (f", {metrics['summary_figure']}"
                                              if "summary_figure" in metrics else "")
        table(f"plot ({solver})", rows)
        if "bands" in m:
            columns(f"agreement by effect size ({solver})", ["band", "pairs", "Pearson R",
                                                                 "Spearman ρ"],
                     [(b["band"], b["k"], b["pearson_r"], b["spearman_rho"]) for b in m["bands"]])


def _show(result):
    t = result["test"]
    rows = [(r["kind"], r["rank"], r["train_index"], r["label_name"], r["predicted_change"],
             "–" if r["actual_change"] is None else
             f"{r['actual_change']:.6g} ± {r['error_bound']:.1e}") for r in result["rows"]]
    figure = f"; {result['figure']}" if result["figure"] else ""
    columns(f"test {t['test_index']}: label {t['label_name']}, predicted {t['predicted_name']} "
             f"(p(label) = {t['probability_of_label']:.3f}){figure}",
             ["", "rank", "train index", "label", "predicted change", "actual change"], rows)


def _self_influence(record: dict, rows: list, order: str, figure) -> None:
    table("self-influence", {
        "training points": record["n_train"],
        "sample certified independently": record["sample"],
        "largest error on the sample, measured (relative)":
            record["sample_measured_relative_error_max"],
        "largest error on the sample, proven (relative)":
            record["sample_proven_relative_error_max"],
        "Hessian factor": record.get("hessian_factor") or "–",
        "seconds": record["seconds"]})
    check = record.get("check")
    if check:
        table(f"truth check: the {check['k']} largest, each removed (certified LOO)", {
            "Pearson R (predicted vs actual own change)": check["pearson_r"],
            "Spearman ρ": check["spearman_rho"], "slope": check["slope"],
            "certified ‖∇R₋z‖ ≤ 1e-08": f"{check['certified']} of {check['k']}",
            "error bound ≤ 1 % of |change|": f"{check['within_target']} of {check['k']}",
            "largest error bound": check["largest_error_bound"], "figure": check["figure"]})
    extra = {"koh": "−I_koh (∇CE both sides)", "loo-loss": "loss + predicted own change"}
    shown = [extra[order]] if order in extra else []
    columns(f"training labels to check first (by {order}, largest first)"
            + (f"; {figure}" if figure else ""),
            ["rank", "train index", "label", "predicted (p)", "p(label)",
             "self-influence I(z, z)", "predicted own change −I/n", "training loss",
             *shown],
            [(r["rank"], r["train_index"], r["label_name"],
              f"{r['predicted_name']} ({r['predicted_probability']:.3f})",
              f"{r['label_probability']:.3g}", r["self_influence"], r["predicted_own_change"],
              r["train_loss"], *([r["ranked_by"]] if shown else [])) for r in rows])
    output.console().print(
        "signs: self-influence I(z, z) = −∇CE(z)ᵀH⁻¹∇L(z) is negative where removing z would "
        "raise its own loss (by about −I/n, the predicted own change); the largest rises, the "
        "most negative I, come first.", highlight=False)


def _mislabel(m: dict) -> None:
    checks = m["checks"]
    header = ["ordering", "AUC"] + [f"{c:g}" for c in checks]
    for key, title in (("test_accuracy", "test accuracy (proven), mean over seeds"),
                       ("fraction_fixed", "fraction of flips fixed, mean over seeds")):
        columns(title, header,
                [(name, f"{e['auc']:.4f} ± {e['auc_se']:.4f}",
                  *[f"{v:.4f}" for v in e[key]]) for name, e in m["per_ordering"].items()])
    table("mislabel", {
        "clean model's test accuracy (proven)": m["clean"]["test_accuracy"],
        "flipped models' test accuracy": f"{m['flipped_test_accuracy'][0]:.4f}",
        "models certified": f"{m['models_certified']} of {m['models']} "
                            f"(largest ‖∇R‖ ≤ {m['max_grad_bound']:.1e})",
        "test predictions not proven": f"{m['unproven_predictions']} of "
                                       f"{m.get('predictions_checked', '?')}",
        "every flip fixed = the clean model (within both certificates)":
            m["all_fixed_equals_clean"],
        "self-influence: largest proven relative error (samples)":
            m["self_influence_sample_proven_relative_max"],
        "figure": m["figure"], "seconds": m["seconds"]})


def _attack(m: dict) -> None:
    rows = [(f"{r['eps']:g}", str(r["budget"]),
             *[f"{r[f'{who}_{v}']:.2f}" for who in ("attack", "baseline")
               for v in ("flipped", "held", "undecided")]) for r in m["table"]]
    columns(f"attack: fractions of {len(m['test_indices'])} correctly classified test points "
            f"(n = {m['n_train']}, {m['classes']} classes)",
            ["ε", "budget", "flipped", "held", "undecided", "random: flipped", "held",
             "undecided"], rows)
    a = m["agreement"]
    paper = m["paper"]["flip_fraction"]
    table("attack", {
        "smallest ε with half flipped (of those run)":
            ", ".join(f"budget {b}: {'—' if e is None else f'{e:g}'}"
                      for b, e in m["half_flip_eps"].items()),
        "paper (Section 5.2, ε 0.5/255)": ", ".join(f"budget {b}: {f:.0%}"
                                                    for b, f in paper.items()),
        "predicted vs actual test-loss change": f"Pearson {fmt(a.get('pearson_r'))}, "
                                                f"Spearman {fmt(a.get('spearman_rho'))}",
        "verdicts undecided": f"{m['undecided']} of {m['verdicts']}",
        "models certified": f"{m['models_certified']} of {m['verdicts']} "
                            f"(largest ‖∇R‖ ≤ {m['max_grad_bound']:.1e})",
        "figure": m.get("figure"), "seconds": m["seconds"]})


def _lds(section: dict) -> None:
    rec = section.get("truth_record") or {}
    if rec.get("stage") == "subsets":
        table("lds: subset truth", {
            "subsets": f"{section['subsets']} of {section['subset_size']} points",
            "measure": section["measure"], "test points": section["test_points"],
            "certified": f"{rec['certified']} of {section['subsets']} "
                         f"(max ‖∇R_S‖ bound {rec['max_grad_norm_bound']:.2e})",
            "max output bound (proven)": f"{rec['max_output_bound']:.2e}",
            "max bound / spread": f"{rec['max_bound_over_spread']:.2e}",
            "seconds": rec["seconds"]})
    rows = []
    for name, e in section["methods"].items():
        lds = e.get("lds")
        loo = e.get("loo") or {}
        rows.append([name, str(e["test_points"]),
                     "—" if lds is None else f"{lds:.4f}",
                     "—" if lds is None else f"[{e['lds_lo']:.4f}, {e['lds_hi']:.4f}]",
                     "—" if lds is None else ("exact" if e["certified"] else
                                             f"groups ≤ {e['largest_group']}"),
                     fmt(loo.get("spearman_mean")) if loo else "—",
                     f"[{loo['spearman_mean_lo']:.4f}, {loo['spearman_mean_hi']:.4f}]"
                     if loo else "—",
                     fmt(loo.get("pearson_mean")) if loo else "—",
                     fmt(loo.get("pooled_pearson")) if loo else "—"])
    columns("LDS and LOO correlation (certified truth)",
            ["scores", "tests", "LDS", "LDS range", "ranks", "LOO ρ", "LOO ρ range", "LOO R",
             "pooled R"],
            rows)
    output.console().print(f"figure: {section['figure']}", highlight=False)
    for name, e in section["methods"].items():
        if e.get("note"):
            output.console().print(f"{name}: {e['note']}", highlight=False)


# ------------------------------------------------------------- what the commands call
def report_train(rec):
    output.emit("train", rec, _train)


def report_ihvp(rec):
    output.emit("ihvp", rec, _ihvp)


def report_score(rec):
    output.emit("score", rec, _score)


def report_loo(rec):
    output.emit("loo", rec, _loo)


def report_plot(metrics):
    output.emit("plot", metrics, _plot)


def report_show(result):
    output.emit("show", result, _show)


def report_self_influence(record: dict, rows: list, order: str, figure):
    output.emit("self_influence", {**record, "order": order, "check_first": rows,
                                   "image": figure},
                lambda _: _self_influence(record, rows, order, figure))


def report_mislabel(m: dict):
    output.emit("mislabel", m, _mislabel)


def report_lds(section: dict):
    output.emit("lds", section, _lds)


def report_times(title: str, rows: dict):
    output.emit("times", {"title": title, **rows}, lambda _: table(title, rows))


def report_skipped(name: str, record: dict):
    """A stage ``infl run`` found current: its record, in the JSON only (a table reader was
    told on stderr that it was skipped)."""
    output.emit(name, {**record, "skipped": True}, lambda _: None)


def report_attack(m: dict):
    output.emit("attack", m, _attack)
