"""Which candidates to train, and how well a proxy ranks trained stitches (frontiers: :mod:`stitchkit.pareto`)."""
from __future__ import annotations

import math
import random
from typing import Sequence

from ..pareto import pareto_front


def select(costs: Sequence[float], scores: Sequence[float], count: int) -> list[int]:
    """``count`` candidates to train: the predicted frontier first (cost against proxy score), then the next
    frontier of what is left, and so on (non-dominated sorting), the last layer cut by score. Training the top
    ``count`` by score alone would spend the budget on the dearest stitches (small gaps score best) and leave the
    cheap end of the frontier unexplored."""
    left = [i for i in range(len(costs)) if scores[i] is not None and not math.isnan(scores[i])]
    chosen: list[int] = []
    while left and len(chosen) < count:
        layer = [left[k] for k in pareto_front([(costs[i], scores[i]) for i in left])]
        room = count - len(chosen)
        if len(layer) > room:
            layer = sorted(layer, key=lambda i: -scores[i])[:room]
        chosen += layer
        taken = set(layer)
        left = [i for i in left if i not in taken]
    return chosen


def top_by_score(scores: Sequence[float], count: int) -> list[int]:
    """The ``count`` best scores (the plain reading of "train the top K")."""
    valid = [i for i in range(len(scores)) if scores[i] is not None and not math.isnan(scores[i])]
    return sorted(valid, key=lambda i: -scores[i])[:count]


def _ranks(values: Sequence[float]) -> list[float]:
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1  # ties share their mean rank
        i = j + 1
    return ranks


def _pearson(x: Sequence[float], y: Sequence[float]) -> float:
    n = len(x)
    mx, my = sum(x) / n, sum(y) / n
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))
    sxx = sum((a - mx) ** 2 for a in x)
    syy = sum((b - my) ** 2 for b in y)
    return sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else float("nan")


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation (Pearson's on ranks, ties at their mean rank)."""
    return _pearson(_ranks(x), _ranks(y))


def kendall(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b (ties counted as neither concordant nor discordant, and corrected for)."""
    concordant = discordant = ties_x = ties_y = 0
    n = len(x)
    for i in range(n):
        for j in range(i + 1, n):
            dx, dy = x[i] - x[j], y[i] - y[j]
            if dx == 0 and dy == 0:
                continue
            if dx == 0:
                ties_x += 1
            elif dy == 0:
                ties_y += 1
            elif (dx > 0) == (dy > 0):
                concordant += 1
            else:
                discordant += 1
    denominator = math.sqrt((concordant + discordant + ties_x) * (concordant + discordant + ties_y))
    return (concordant - discordant) / denominator if denominator else float("nan")


def bootstrap_interval(x: Sequence[float], y: Sequence[float], statistic, resamples: int = 1000,
                       seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """A percentile bootstrap interval of ``statistic(x, y)`` over resampled pairs."""
    rng = random.Random(seed)
    n = len(x)
    values = []
    for _ in range(resamples):
        picks = [rng.randrange(n) for _ in range(n)]
        value = statistic([x[i] for i in picks], [y[i] for i in picks])
        if not math.isnan(value):
            values.append(value)
    if not values:
        return (float("nan"), float("nan"))
    values.sort()
    low = values[int((1 - level) / 2 * (len(values) - 1))]
    high = values[int((1 + level) / 2 * (len(values) - 1))]
    return (low, high)
