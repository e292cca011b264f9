"""The Python API: the command line's stages as a :class:`Study` of a :class:`Dataset`, on the
same code path (:mod:`.ops`: the operations both call). Importing this loads no torch."""

from infl_cli.api.dataset import Dataset
from infl_cli.api.features import features
from infl_cli.api.results import Ihvp, Judgement, Lds, Loo, Model, Result, Scores
from infl_cli.api.study import Study, hinge, paper_figure

__all__ = ["Dataset", "Study", "features", "paper_figure", "hinge", "Model", "Ihvp", "Scores",
           "Loo", "Lds", "Judgement", "Result"]
