"""Accuracy-compute frontiers: the one definition the reports and the search share.

A point is ``(gmacs, accuracy)``: less compute and more accuracy are better. The frontier (Pareto front) is the set
of points no other point beats on both. Its hypervolume is the area it dominates above a reference accuracy and left
of a reference compute: one number for "how good a set of stitches is", comparable between the frontier a search
finds and the exhaustive one when both use the same reference.
"""
from __future__ import annotations

import math
from typing import Sequence


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points on the frontier (least compute first); of equal points the first."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1], i))
    front, best = [], -math.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def hypervolume(points: Sequence[tuple[float, float]], ref_gmacs: float, ref_accuracy: float) -> float:
    """The area (GMACs x accuracy points) the points dominate inside ``[0, ref_gmacs] x [ref_accuracy, inf)``."""
    inside = [(g, a) for g, a in points if g <= ref_gmacs and a > ref_accuracy]
    area = 0.0
    front = sorted((inside[i] for i in pareto_front(inside)), key=lambda p: p[0])
    for k, (g, a) in enumerate(front):
        right = front[k + 1][0] if k + 1 < len(front) else ref_gmacs
        area += (right - g) * (a - ref_accuracy)
    return area


def front_points(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The frontier's points themselves, least compute first."""
    return [points[i] for i in pareto_front(points)]
