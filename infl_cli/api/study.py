"""A study from Python: a work folder and its data, and every stage as a method. Each method
calls the same operation as its command (:mod:`~infl_cli.api.ops`), so the artifacts, checks,
fingerprints and locks are the command line's, and a folder made by either is read by both.
Settings are keyword arguments with the command's option names and defaults (``tests`` and
``k`` are the API's names for ``--test-index`` and ``--num``)."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from infl_cli.api import ops
from infl_cli.api.dataset import Dataset, as_numpy
from infl_cli.api.results import Ihvp, Judgement, Lds, Loo, Model, Result, Scores
from infl_cli.errors import BadInput, InflError
from infl_cli.runtime import artifacts as art
from infl_cli.runtime import progress as progress_mod


class Study:
    """A work folder (the command line's ``-w``) and the data its model learns from.

    ``Study("work", data)`` starts or continues a study of ``data`` (a :class:`Dataset`);
    ``Study.open("work")`` continues the study a folder holds, made by the API or by ``infl``.
    ``progress=False`` turns progress bars off (they show in a terminal and in Jupyter).
    """

    def __init__(self, workdir="artifacts", data: Dataset | None = None, *,
                 progress: bool = True):
        if data is not None and not isinstance(data, Dataset):
            raise BadInput("data: a infl.Dataset (Dataset.load or Dataset.from_arrays), got "
                           f"{type(data).__name__}")
        self.workdir = Path(os.fspath(workdir))
        self.data = data
        self.progress = progress

    @classmethod
    def open(cls, workdir, *, progress: bool = True) -> "Study":
        """The study in ``workdir`` (its model, data and artifacts as recorded)."""
        workdir = Path(os.fspath(workdir))
        if not (workdir / art.MODEL).is_file():
            raise InflError(f"{workdir} holds no study (no {art.MODEL}); start one with "
                            "infl.Study(workdir, data).train() or `infl train -w`")
        return cls(workdir, progress=progress)

    @classmethod
    def from_sklearn(cls, workdir, clf, X_train, y_train, X_test, y_test, *,
                     progress: bool = True) -> "Study":
        """A study of a fitted scikit-learn ``LogisticRegression`` (see
        :func:`~infl_cli.api.sklearn.from_sklearn`)."""
        from infl_cli.api.sklearn import from_sklearn

        return from_sklearn(cls, workdir, clf, X_train, y_train, X_test, y_test,
                            progress=progress)

    def __repr__(self) -> str:
        if (self.workdir / art.MODEL).is_file():
            rec = art.read_record(self.workdir / art.MODEL)
            held = f"a model of {rec['settings'].get('dataset')}"
        else:
            held = "no model yet"
        return f"Study({str(self.workdir)!r}: {held}; data {self.data!r})"

    # -- the pipeline ---------------------------------------------------------------------

    @contextmanager
    def _calling(self):
        with progress_mod.shown(self.progress):
            try:
                yield
            finally:
                progress_mod.flush()

    def _with_data(self, operation, settings: dict):
        """``operation`` (train or run) on this study's data: arrays held in memory are
        written to the folder once the settings are checked, and removed again if the
        operation then fails (nothing of a refused call stays)."""
        if self.data is None:
            return operation(self.workdir, **settings)
        given = {**self.data.settings(self.workdir), **settings}
        if not self.data.in_memory:
            return operation(self.workdir, **given)
        path = self.data.file_in(self.workdir)
        new = not path.is_file()
        try:
            return operation(self.workdir, **given,
                             prepare=lambda: self.data.write_to(self.workdir))
        except BaseException:
            if new:
                path.unlink(missing_ok=True)
            raise

    def train(self, **settings) -> Model:
        """``infl train``: fit the model to its certified optimum (``wd``, ``train_tol``,
        ``model``, ``replace``, …). Training on other data than the folder's model is
        refused unless ``replace=True``."""
        with self._calling():
            self._with_data(ops.train, settings)
        return self.model()

    def model(self) -> Model:
        """The trained model, as written."""
        arrays, record = self._read(art.MODEL, "train", "train()")
        return Model(weight=arrays["weight"], record=record)

    def ihvp(self, solver: str | None = None, tests=None, **settings) -> Ihvp:
        """``infl ihvp``: s_test per test point (``tests``: indices, or ``test_sample=N``)."""
        with self._calling():
            record = ops.ihvp(self.workdir, solver=solver, test_index=tests, **settings)
        arrays, record = self._read(art.ihvp_name(record["label"]), "ihvp", "ihvp()")
        return Ihvp(solver=record["label"], ihvp=arrays["ihvp"],
                    test_indices=arrays["test_indices"], record=record)

    def score(self, solver: str | None = None, tests=None, method: str | None = None,
              **settings) -> Scores:
        """``infl score``: the influence of every training point on each test loss, from the
        inverse-HVPs of ``solver``, or another estimator's (``method="kfac"``, …)."""
        with self._calling():
            record = ops.score(self.workdir, solver=solver, test_index=tests, method=method,
                               **settings)
        return self.scores(record["settings"]["solver"])

    def scores(self, label: str | None = None) -> Scores:
        """Scores already in the folder: ``label`` (``lissa``, ``exact``, ``kfac``, an
        imported name, …), or the newest."""
        if label is None:
            from infl_cli.stages.common import available_scores

            present = available_scores(self.workdir)
            if not present:
                raise InflError(f"no scores in {self.workdir}; run score() first")
            label = max(present, key=lambda k: (self.workdir / art.scores_name(k))
                        .stat().st_mtime)
        arrays, record = self._read(art.scores_name(label), "score", "score()")
        return Scores(label=label, influence=arrays["influence"],
                      predicted_loss_diff=arrays["predicted_loss_diff"],
                      test_indices=arrays["test_indices"], record=record)

    def loo(self, k: int | None = None, select: str = "top", tests=None, **settings) -> Loo:
        """``infl loo``: retrain without each of the ``k`` points of largest |influence|
        (``select="random"`` or ``"all"``), each actual change with its certified bound."""
        with self._calling():
            ops.loo(self.workdir, num=k, select=select, test_index=tests, **settings)
        return self.loo_result()

    def loo_result(self) -> Loo:
        """The leave-one-out truth already in the folder."""
        arrays, record = self._read(art.LOO, "loo", "loo()")
        return Loo(train_indices=arrays["train_indices"], test_indices=arrays["test_indices"],
                   actual_loss_diff=arrays["actual_loss_diff"],
                   bound=arrays["actual_error_bound"], selected=arrays["selected"],
                   grad_norm=arrays["grad_norm"], record=record)

    def plot(self, solver=None, **settings) -> Result:
        """``infl plot``: Figure 2 (predicted against actual change) and its metrics."""
        with self._calling():
            record = ops.plot(self.workdir, solver=solver, **settings)
        return Result("plot", record, figures=_figures(record))

    def show(self, test: int | None = None, n: int = 8, solver: str | None = None,
             out=None, csv=None) -> Result:
        """``infl show``: the most helpful and most harmful training points of one test
        point (``rows``), and their image where the features are square images."""
        with self._calling():
            record = ops.show(self.workdir, test, n, solver, out, csv)
        return Result("show", record, figures=[record.get("figure")],
                      rows=record.get("helpful", []) + record.get("harmful", []))

    def run(self, **settings) -> dict:
        """``infl run``: every stage in order, skipping those up to date; the records by
        stage."""
        with self._calling():
            return self._with_data(ops.run, settings)

    # -- benchmarks -----------------------------------------------------------------------

    def lds(self, subsets: int = 100, fraction: float = 0.5, tests=None, **settings) -> Lds:
        """``infl lds``: certified subset retraining (computed once, then reused), and the LDS
        and LOO correlation of every scores artifact in the folder."""
        with self._calling():
            section = ops.lds(self.workdir, subsets=subsets, fraction=fraction,
                              test_index=tests, **settings)
        return Lds(methods={k: Judgement.of(k, v) for k, v in section["methods"].items()},
                   record=section)

    def judge(self, scores, meaning: str = "helpful", name: str = "mine", tests=None,
              **lds_settings) -> Judgement:
        """Your own attribution, judged on certified truth: ``scores`` is a [T, n] or [n, T]
        array for the test points ``tests`` (by default the truth's), or a callable
        ``f(study, test_indices) -> array`` called for the test points the truth covers.
        ``meaning``: ``helpful`` (positive = the point lowers the test loss: TRAK, TracIn,
        dattri, Kronfluence), ``upweight`` (I_up,loss) or ``removal`` (our predicted change).
        This is ``infl score --import`` then ``infl lds``: the truth is computed when absent
        (for ``tests``, else the test points of the scores present) and kept."""
        from infl_cli.stages.importscores import validate

        validate(name, meaning, self.workdir / f"imported-{name}.npy")
        truth = self.workdir / "subsets.safetensors"
        if truth.is_file():  # judged on the truth present unless told otherwise
            held = art.read_record(truth)["settings"]
            lds_settings = {**{k: held[k] for k in ("subsets", "fraction", "seed", "measure",
                                                    "tol") if k in held}, **lds_settings}
        if callable(scores) or tests is None:
            held = self.truth(tests, **lds_settings)
            if callable(scores):
                scores = scores(self, list(held))
            tests = held if tests is None else tests
        tests = [int(t) for t in np.atleast_1d(as_numpy(tests, "tests"))]
        file = self._keep_scores(name, as_numpy(scores, "scores"))
        with self._calling():
            ops.score(self.workdir, import_file=file, name=name, meaning=meaning,
                      test_index=tests)
            section = ops.lds(self.workdir, test_index=tests, **lds_settings)
        return Judgement.of(name, section["methods"][name])

    def truth(self, tests=None, **lds_settings) -> list:
        """The certified subset truth (``subsets.safetensors``), retrained unless current;
        returns its test points. ``tests``: as asked, else the current truth's, else those of
        the scores present."""
        from infl_cli.api import common
        from infl_cli.settings import LdsSettings, validate_lds
        from infl_cli.stages import lds as lds_stage

        path = self.workdir / lds_stage.TRUTH
        if tests is None and path.is_file():
            tests = art.read_record(path)["settings"]["test_indices"]
        names = ("subsets", "fraction", "seed", "measure", "tol", "chunk_size")
        settings = LdsSettings(**{k: v for k, v in lds_settings.items() if k in names})
        validate_lds(settings)
        choice = None if tests is None else common.tests(tests, None, settings.seed)
        where = common.device(lds_settings.get("device", "auto"))
        with self._calling(), common.writing(self.workdir):
            record = lds_stage.retrain_subsets(self.workdir, settings, choice, where)
        return [int(t) for t in record["settings"]["test_indices"]]

    def _keep_scores(self, name: str, array: np.ndarray) -> Path:
        """The scores as ``imported-NAME.npy`` in the folder: the imported artifact's record
        names a file that stays."""
        path = self.workdir / f"imported-{name}.npy"
        self.workdir.mkdir(parents=True, exist_ok=True)

        def write(tmp):
            with open(tmp, "wb") as f:
                np.save(f, array)

        art.atomic_write(path, write)
        return path

    # -- studies --------------------------------------------------------------------------

    def self_influence(self, check: int = 0, num: int = 20, order: str = "self-influence",
                       **settings) -> Result:
        """``infl self-influence``: every training point's self-influence (``arrays``), the
        ``num`` to check first (``rows``), and with ``check=K`` their truth by retraining."""
        with self._calling():
            record, rows, figure = ops.self_influence(self.workdir, check=check, num=num,
                                                      order=order, **settings)
        arrays, _ = art.load_arrays(self.workdir / "self-influence.safetensors",
                                    "self-influence")
        return Result("self-influence", record, figures=[figure], rows=rows,
                      arrays={k: v for k, v in arrays.items() if not k.startswith("sample_")})

    def mislabel(self, **settings) -> Result:
        """``infl mislabel``: the paper's Figure 6 on this study's model."""
        with self._calling():
            record = ops.mislabel(self.workdir, **settings)
        return Result("mislabel", record, figures=_figures(record))

    def attack(self, **settings) -> Result:
        """``infl attack``: the paper's Figure 5 (training-set attack) on this study's model;
        the settings are the command's options (``test_index``, ``test_sample``, ``budget``,
        ``eps``, ``steps``, …)."""
        with self._calling():
            record = ops.attack(self.workdir, **settings)
        return Result("attack", record, figures=_figures(record))

    def components(self, test: int | None = None, **settings) -> Result:
        """``infl components``: the paper's Figure 1 on this study's binary model."""
        with self._calling():
            record = ops.components(self.workdir, test_index=test, **settings)
        return Result("components", record, figures=_figures(record.get("metrics", {})))

    def _read(self, name: str, stage: str, how: str):
        path = self.workdir / name
        if not path.is_file():
            raise InflError(f"{self.workdir} has no {name}; run {how} first")
        return art.load_arrays(path, stage)


def _figures(record: dict) -> list:
    found = []
    for key, value in record.items():
        if isinstance(value, str) and value.endswith((".png", ".pdf")) and "figure" in key:
            found.append(value)
    for value in record.get("figures", []) if isinstance(record.get("figures"), list) else []:
        found.append(value)
    return found


def paper_figure(workdir, figure: int, *, data_dir=None, download: bool = True,
                 progress: bool = True) -> Result:
    """The paper's Figure 1 (the parts of influence) or 3 (the SVM and the smooth hinge) with
    the authors' settings, in ``workdir/figure1`` or ``workdir/figure3``:
    ``infl run --figure``."""
    with progress_mod.shown(progress):
        records = ops.run(workdir, figure=figure, data_dir=data_dir, download=download)
    key = "components" if figure == 1 else "hinge"
    record = records[key]
    return Result(key, record, figures=_figures(record.get("metrics", {})))


def hinge(workdir, *, progress: bool = True, **settings) -> Result:
    """``infl hinge``: a certified linear SVM through the smooth hinge (the paper's Figure 3),
    in ``workdir``, with the command's settings (``classes``, ``wd``, ``temperatures``, …)."""
    with progress_mod.shown(progress):
        record = ops.hinge(workdir, **settings)
    return Result("hinge", record, figures=_figures(record.get("metrics", {})))
