"""What the stages share: test-point choices, up-to-date checks, the model and its scores.

Nothing here imports torch at module level: a stage that only checks whether its artifact is
current, or only reads records and arrays, never waits for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from infl_cli.engines import engine_for, policy_for, spec_of
from infl_cli.errors import InflError
from infl_cli.runtime import artifacts as art
from infl_cli.runtime import progress
from infl_cli.settings import SOLVER_PRIORITY
from infl_cli.stages import selection

is_current = art.is_current


@dataclass
class TestChoice:
    """Test points asked for on the command line: ``-t`` indices, or a ``--test-sample`` of
    that many drawn with ``seed``; neither means the stage's default."""

    indices: list | None = None
    sample: int | None = None
    seed: int = 0

    def asked(self, n_test: int) -> list[int] | None:
        """The test points asked for (``-t`` or the drawn sample), or None for the default."""
        if not self.indices and self.sample is None:
            return None
        return self.resolve(n_test, [])

    def resolve(self, n_test: int, default: list[int], available: list[int] | None = None,
                source: str = "") -> list[int]:
        return selection.resolve_test_indices(self.indices, self.sample, self.seed, n_test,
                                              default, available, source)


def resolve_path(path: Path | None) -> str | None:
    return str(Path(path).expanduser().resolve()) if path is not None else None


def compute_device(device):
    """The torch device a stage computes on: as given, or the CPU (the CLI resolves
    ``auto``), with reduced-precision shortcuts off."""
    import torch

    from infl_cli.runtime import device as device_mod

    device = torch.device(device) if device is not None else torch.device("cpu")
    device_mod.check_precision()
    return device


def model_record(workdir: Path) -> dict:
    return art.checked_record(workdir / art.MODEL, "train", "infl train")


def model_dataset(mrec: dict, data=None):
    """The training data a model record names (the model kind takes its training set from
    the dataset as loaded, or from ``data``), checked against the record's fingerprint."""
    from infl_cli.data.datasets import recorded_dataset

    s = mrec["settings"]
    data = policy_for(spec_of(mrec).kind).training_data(
        data if data is not None else recorded_dataset(s), spec_of(mrec))
    if data.fingerprint != mrec["inputs"]["data"]:
        raise InflError(f"the data now at {s['data_dir'] or s['dataset']} differ from those the "
                        f"model was trained on; rerun `infl train`")
    return data


def load_model(workdir: Path, data=None, device=None):
    """(model tensors, model record, training data) with the data checked against the model's
    record, the tensors and the data on ``device`` (default: the CPU), wherever the model was
    trained. ``data``: the dataset as loaded (the model kind takes its training set from it)."""
    device = compute_device(device)
    tensors, record = art.load_artifact(workdir / art.MODEL, "train", hint="infl train")
    data = model_dataset(record, data)
    return {key: t.to(device) for key, t in tensors.items()}, record, data.to(device)


def closed_form_model(workdir: Path, what: str, device=None):
    """(tensors, record, data, engine, certificate) of a model with the logistic model's
    closed form (its certified gradient at Ŵ included), for the studies built on it; any
    other kind is refused in one line."""
    mrec = model_record(workdir)
    model_policy(mrec).require_closed_form(what, workdir / art.MODEL)
    engine = model_engine(mrec)
    tensors, mrec, data = load_model(workdir, device=device)
    cert = engine.certificate(tensors, mrec)
    if cert is None:
        raise InflError(f"{workdir / art.MODEL} predates the certified gradient that training "
                        "now keeps; rerun `infl train`")
    return tensors, mrec, data, engine, cert


def model_tensors(workdir: Path, names: tuple, stage: str = "train"):
    """Some of the model's tensors as NumPy arrays, with its record (no torch)."""
    arrays, record = art.load_arrays(workdir / art.MODEL, stage, hint="infl train")
    return {name: arrays[name] for name in names if name in arrays}, record


def model_policy(mrec: dict):
    """The torch-free policy of a model record's kind (:mod:`~infl_cli.engines.policy`)."""
    return policy_for(spec_of(mrec).kind)


def model_engine(mrec: dict):
    """The engine of a model record (:mod:`~infl_cli.engines.spec`)."""
    return engine_for(spec_of(mrec).kind)


def available_scores(workdir: Path) -> list[str]:
    """Every scores label in the work folder, most accurate first: exact, cg, lissa, then the
    others by name (damped solvers, the other estimators, imported tools)."""
    labels = [p.name[len("scores-"):-len(".safetensors")]
              for p in Path(workdir).glob("scores-*.safetensors")]
    first = [s for s in SOLVER_PRIORITY if s in labels]
    return first + sorted(set(labels) - set(first))


def load_scores(workdir: Path, solver: str, model_fp: str, numpy: bool = False):
    """(tensors, record) of the scores named ``solver``, checked against the model; NumPy
    arrays with ``numpy``, else torch tensors."""
    load = art.load_arrays if numpy else art.load_artifact
    tensors, rec = load(workdir / art.scores_name(solver), "score",
                        hint=f"infl score --solver {solver}")
    if rec["inputs"]["model"] != model_fp:
        raise InflError(f"{art.scores_name(solver)} was computed for another model than "
                        f"{art.MODEL}; rerun `infl ihvp` and `infl score`")
    return tensors, rec


def score_rows(tensors, test_indices: list[int], name: str) -> list[int]:
    """Rows of a scores artifact for these test indices (each must be there)."""
    have = [int(t) for t in tensors["test_indices"].tolist()]
    missing = [t for t in test_indices if t not in have]
    if missing:
        raise InflError(f"{name} has no scores for test index {missing[0]} (it has "
                        f"{', '.join(map(str, have[:12]))}{', …' if len(have) > 12 else ''})")
    return [have.index(t) for t in test_indices]


def choose_artifact(workdir: Path, kind: str, label: str | None, model_fp: str,
                    tests: list[int] | None = None, stage: str = "") -> str:
    """The label of the ``kind`` artifacts (``scores`` or ``ihvp``) a stage reads: ``label``
    when given; else the newest one made for this model that holds every test point of
    ``tests`` (any, when None). Says which on stderr; refuses in one line when none does."""
    if label is not None:
        return label
    found = []
    for path in Path(workdir).glob(f"{kind}-*.safetensors"):
        try:
            rec = art.read_record(path)
        except InflError:
            continue
        if rec.get("inputs", {}).get("model") != model_fp:
            continue
        have = [int(t) for t in rec.get("settings", {}).get("test_indices", [])]
        found.append((path.stat().st_mtime_ns, path.name[len(kind) + 1:-len(".safetensors")],
                      have))
    found.sort(reverse=True)
    fitting = [f for f in found if tests is None or set(tests) <= set(f[2])]
    if not fitting:
        what = "scores" if kind == "scores" else "inverse-HVPs"
        make = "`infl ihvp` and `infl score`" if kind == "scores" else "`infl ihvp`"
        if not found:
            others = sorted(p.name for p in Path(workdir).glob(f"{kind}-*.safetensors"))
            if others:
                raise InflError(f"{', '.join(others)} {'was' if len(others) == 1 else 'were'} "
                                f"computed for another model than {art.MODEL}; rerun {make}")
            raise InflError(f"no {what} of this model in {workdir}; run {make} first")
        missing = sorted(set(tests) - set().union(*(set(f[2]) for f in found)))
        raise InflError(f"no {what} in {workdir} hold test point {missing[0] if missing else tests[0]} "
                        f"({'; '.join(f'{kind}-{f[1]}: {_listing(f[2])}' for f in found[:4])}); "
                        f"run {make} with -t {missing[0] if missing else tests[0]}, or name one "
                        "with --solver")
    chosen = fitting[0][1]
    others = [f[1] for f in found if f[1] != chosen]
    progress.say_later(f"{stage + ': ' if stage else ''}reads {kind}-{chosen}.safetensors (the newest"
                 + (" holding the test points" if tests else "")
                 + (f"; also present: {', '.join(others)}; choose with --solver)" if others
                    else ")"))
    return chosen


def _listing(tests: list[int]) -> str:
    return ", ".join(map(str, tests[:6])) + (", …" if len(tests) > 6 else "")


def study_figure(workdir: Path, key: str, fingerprint: str, png: Path, draw) -> dict:
    """The ``key`` section of the work folder's ``metrics.json`` for a study's figure ``png``
    (and its PDF), drawn by ``draw()`` (which returns the section's metrics) only when the
    section was made from another artifact than ``fingerprint`` or a figure is missing, as
    ``infl run`` redraws nothing whose inputs did not change."""
    import json

    try:
        section = json.loads((workdir / art.METRICS).read_text()).get(key)
    except (OSError, ValueError, AttributeError):
        section = None
    if isinstance(section, dict) and section.get("made_from") == fingerprint \
            and section.get("figure") == str(png) and png.is_file() \
            and png.with_suffix(".pdf").is_file():
        return section
    metrics = draw()
    metrics.update(figure=str(png), made_from=fingerprint)
    art.update_json(workdir / art.METRICS, key, metrics)
    return metrics
