"""The paper's Figures 1 and 3 as presets of ``infl run --figure N``: the authors' settings
(kohpangwei/influence-release), each in its own sub-folder of the work folder so that the
Figure 2 artifacts beside it stay as they are.

* Figure 1 (``scripts/run_components_experiment.py``): MNIST 1 vs 7, binary logistic
  regression at wd 0.01 (our two-class model at wd 0.02: :mod:`~infl_cli.stages.components`),
  test point 30, all 11,894 training points.
* Figure 3 (``scripts/run_hinge_experiment.py``): MNIST 1 vs 7 trimmed to 11,800 / 2,100, the
  SVM at wd 0.01, test point 1597, temperatures 0, 0.001, 0.1, the 100 largest |influence| at
  t = 0 retrained (:mod:`~infl_cli.stages.hinge`).
"""

from __future__ import annotations

from pathlib import Path

from infl_cli.runtime import artifacts as art

PAPER_CLASSES = (1, 7)
FIGURE1_WD = 0.02  # binary wd 0.01 ≡ the two-class multinomial model at 2 × 0.01
FIGURE_FOLDERS = {1: "figure1", 3: "figure3"}


def figure_folder(workdir: Path, figure: int) -> Path:
    return Path(workdir) / FIGURE_FOLDERS[figure]


def run_figure1(workdir: Path, dataset: str, data_dir, download: bool, train_tol: float,
                max_iter: int, device=None, report=None) -> dict:
    """Train (when not current) and compute the components; returns the components record."""
    from infl_cli.data.datasets import load_dataset
    from infl_cli.stages.components import run_components
    from infl_cli.stages.train import run_train, train_settings

    report = report or {}
    folder = figure_folder(workdir, 1)
    folder.mkdir(parents=True, exist_ok=True)
    data = load_dataset(dataset, data_dir, download, classes=PAPER_CLASSES)
    settings = train_settings(dataset, data_dir, FIGURE1_WD, train_tol, classes=PAPER_CLASSES)
    path = folder / art.MODEL
    if art.is_current(path, settings, {"data": data.fingerprint}):
        report.get("say", lambda m: None)(f"train: {path} is up to date, skipped")
    else:
        report.get("train", lambda r: None)(
            run_train(folder, dataset, data_dir, FIGURE1_WD, train_tol, max_iter, download,
                      data=data, device=device, classes=PAPER_CLASSES))
    return run_components(folder, None, device)


def run_figure3(workdir: Path, dataset: str, data_dir, download: bool) -> dict:
    """The SVM study with the authors' settings; returns its record."""
    from infl_cli.data.datasets import load_dataset
    from infl_cli.stages.hinge import HingeSettings, run_hinge

    folder = figure_folder(workdir, 3)
    folder.mkdir(parents=True, exist_ok=True)
    data = load_dataset(dataset, data_dir, download, classes=PAPER_CLASSES)
    return run_hinge(folder, data, HingeSettings(), PAPER_CLASSES)
