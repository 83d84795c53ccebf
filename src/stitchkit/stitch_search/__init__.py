"""Which stitches of a zoo to train under a compute budget (``stitchkit search``): candidates priced without
building them, training-free proxies, the chosen few trained, the accuracy-compute frontier.

    records = stitchkit.search(["resnet18", "vit_micro_patch4_32"], budget_gmacs=0.05, settings={...})
    result = stitchkit.run_search(["resnet18", ...], "runs/search", budget_gmacs=0.05, train_top=10)

(The package is ``stitch_search`` so that ``stitchkit.search`` stays the function.)
"""
from .candidates import Candidate
from ..pareto import hypervolume, pareto_front
from .frontier import kendall, select, spearman
from .proxies import PROXIES
from .run import run_search, search

__all__ = ["Candidate", "PROXIES", "hypervolume", "kendall", "pareto_front", "run_search", "search", "select",
           "spearman"]
