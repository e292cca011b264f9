"""``infl score --import FILE --name NAME``: another tool's attribution scores as a scores
artifact (``scores-NAME.safetensors``), judged by ``plot``, ``loo`` and ``lds`` on the same
certified truth as ours.

**The file.** A [T, n] or [n, T] array (n: the model's training points; T: the test points,
``-t``/``--test-sample`` or a ``test_indices`` array in the file, in that order): ``.npy``;
``.npz`` or ``.safetensors`` with one array, or the array ``scores`` (and optionally
``test_indices``); ``.pt`` with a tensor or a dict of the same names (read with
``weights_only``: no code runs). [T, n] is taken when T = n.

**Sign convention** (``--meaning``; each becomes our two fields, ``influence`` = I_up,loss
and ``predicted_loss_diff`` = −I_up,loss/n, the predicted change of the test loss when the
point is removed):

* ``removal``: the score is the predicted change of the test loss when the point is removed
  (our ``predicted_loss_diff``; Koh & Liang's "predicted loss diff");
* ``upweight``: the derivative of the test loss in the point's weight, I_up,loss (positive:
  the point raises the test loss; Koh & Liang's I_up,loss, Captum's and dattri's
  ``IFAttributor`` influence, which score harmful points positive);
* ``helpful``: positive means training on the point lowers the test loss (raises its margin):
  TRAK's and TracIn's scores, pyDVL's and Kronfluence's "helpful" sign.

Scale is kept as given (only Pearson-type and rank figures compare methods across tools).
A mismatched shape, wrong test indices, NaN or an unreadable file end in one line (exit 2)
and nothing is written.
"""

from __future__ import annotations

import hashlib
import re
import time
from pathlib import Path

import numpy as np

from infl_cli.errors import BadInput
from infl_cli.runtime import artifacts as art
from infl_cli.settings import IMPORT_MEANINGS, SOLVERS
from infl_cli.stages.common import TestChoice, model_record

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$")
SUFFIXES = (".npy", ".npz", ".pt", ".pth", ".safetensors")


def validate(name: str | None, meaning: str, path: Path | None) -> None:
    if path is None:
        return
    if name is None:
        raise BadInput("--import needs --name NAME (the scores become scores-NAME.safetensors)")
    if not NAME.match(name) or "damping" in name:
        raise BadInput(f"--name must be letters, digits and _.+- (up to 64, no 'damping'), "
                       f"got {name!r}")
    if name in SOLVERS:
        raise BadInput(f"--name {name} is one of infl's own solvers; pick another name")
    if meaning not in IMPORT_MEANINGS:
        raise BadInput(f"unknown --meaning {meaning!r}; choose one of: "
                       f"{', '.join(IMPORT_MEANINGS)}")
    if Path(path).suffix.lower() not in SUFFIXES:
        raise BadInput(f"--import reads {', '.join(SUFFIXES)} files, got {Path(path).name}")


def _read(path: Path):
    """(scores array, test indices in the file or None)."""
    suffix = path.suffix.lower()
    if not path.is_file():
        raise BadInput(f"--import: no file {path}")
    try:
        if suffix == ".npy":
            return np.load(path, allow_pickle=False), None
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        elif suffix == ".safetensors":
            from safetensors.numpy import load_file

            arrays = load_file(str(path))
        else:
            import torch

            loaded = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(loaded, torch.Tensor):
                return loaded.detach().to(torch.float64).numpy(), None
            if not isinstance(loaded, dict):
                raise BadInput(f"--import: {path.name} holds a {type(loaded).__name__}, not a "
                               "tensor or a dict of tensors")
            arrays = {k: v.detach().cpu().numpy() for k, v in loaded.items()
                      if isinstance(v, torch.Tensor)}
    except BadInput:
        raise
    except Exception as exc:
        raise BadInput(f"--import: cannot read {path.name} ({type(exc).__name__}: "
                       f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    tests = arrays.pop("test_indices", None)
    if "scores" in arrays:
        scores = arrays["scores"]
    elif len(arrays) == 1:
        scores = next(iter(arrays.values()))
    else:
        raise BadInput(f"--import: {path.name} holds {len(arrays)} arrays "
                       f"({', '.join(sorted(arrays)[:5])}); name the scores 'scores'")
    return scores, tests


def import_scores(workdir: Path, path: Path, name: str, meaning: str,
                  tests: TestChoice | None) -> dict:
    """Check and convert the file (module doc); writes ``scores-NAME.safetensors``."""
    path = Path(path)
    mrec = model_record(workdir)
    n, n_test = int(mrec["n_train"]), int(mrec["n_test"])
    scores, file_tests = _read(path)
    scores = np.asarray(scores)
    if scores.dtype.kind not in "fiu" or scores.ndim != 2:
        raise BadInput(f"--import: the scores must be a 2-D numeric array [T, {n}] or "
                       f"[{n}, T], got {scores.dtype} {list(scores.shape)}")
    if tests is not None and (tests.indices or tests.sample is not None):
        chosen = tests.resolve(n_test, [])
    elif file_tests is not None:
        chosen = [int(t) for t in np.asarray(file_tests).reshape(-1)]
        chosen = TestChoice(chosen).resolve(n_test, chosen)
    else:
        raise BadInput("--import: say which test points the scores are for: -t, "
                       "--test-sample, or a test_indices array in the file")
    t = len(chosen)
    if scores.shape == (t, n):
        layout = "[T, n]"
    elif scores.shape == (n, t):
        scores, layout = scores.T, "[n, T]"
    else:
        raise BadInput(f"--import: scores of shape {list(scores.shape)} do not match "
                       f"{t} test points × {n} training points ([T, n] or [n, T])")
    scores = np.ascontiguousarray(scores, dtype=np.float64)
    if not np.isfinite(scores).all():
        bad = np.argwhere(~np.isfinite(scores))[0]
        raise BadInput(f"--import: the scores hold NaN or infinite values (first at test "
                       f"{chosen[bad[0]]}, training point {bad[1]})")
    if meaning == "removal":
        predicted, influence = scores, -n * scores
    elif meaning == "upweight":
        influence, predicted = scores, -scores / n
    else:  # helpful
        influence, predicted = -scores, scores / n
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    record = {
        "stage": "score",
        "settings": {"solver": name, "test_indices": list(chosen)},
        "inputs": {"model": mrec["fingerprint"], "import": digest},
        "imported": {"file": str(path.resolve()), "sha256": digest, "meaning": meaning,
                     "layout": layout},
        "n_train": n,
        "seconds": 0.0,
        "device": "cpu",
    }
    start = time.perf_counter()
    out = {"influence": np.ascontiguousarray(influence),
           "predicted_loss_diff": np.ascontiguousarray(predicted),
           "test_indices": np.asarray(chosen, dtype=np.int64)}
    record["seconds"] = time.perf_counter() - start
    return art.save_artifact(workdir / art.scores_name(name), out, record)
