"""Population-based training (Jaderberg et al. 2017, https://arxiv.org/abs/1711.09846).

* :mod:`~fastes.pbt.space` — search spaces (:class:`Float`, :class:`Int`, :class:`Choice`,
  :class:`Bool`, dataclasses with :func:`hparam`) and the explore operators.
* :mod:`~fastes.pbt.select` — exploit rules: Ray Tune's truncation, EPBT's elitism + tournament.
* :class:`VectorizedPBT` — N members of one model trained in one batched program.
* :class:`ProcessPBT` — a training callback (any framework) run in worker processes.
* :func:`~fastes.pbt.grid.grid_search` — a grid of configurations, one run directory each.
* :mod:`~fastes.pbt.taylorglo` — the TaylorGLO loss, whose coefficients PBT can evolve.
"""

from .grid import grid_search
from .loop import PBTResult
from .process import Candidate, ProcessPBT
from .select import Exploit, gather, rank_order, tournament, truncation
from .space import Bool, Choice, Float, Int, Space, as_space, hparam
from .taylorglo import taylorglo_loss, taylorglo_space
from .vectorized import VectorizedPBT

__all__ = [
    "Bool",
    "Candidate",
    "Choice",
    "Exploit",
    "Float",
    "Int",
    "PBTResult",
    "ProcessPBT",
    "Space",
    "VectorizedPBT",
    "as_space",
    "gather",
    "grid_search",
    "hparam",
    "rank_order",
    "taylorglo_loss",
    "taylorglo_space",
    "tournament",
    "truncation",
]
