"""A small module the demo opens and completes in; it is data, never imported."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class Point:
    x: float
    y: float

    def distance_to(self, other: Point) -> float:
        """Euclidean distance between two points."""
        return math.hypot(self.x - other.x, self.y - other.y)


def centroid(points: list[Point]) -> Point:
    """The mean of the points' coordinates."""
    if not points:
        raise ValueError("centroid of no points")
    x = sum(p.x for p in points) / len(points)
    y = sum(p.y for p in points) / len(points)
    return Point(x, y)


def farthest(points: list[Point], origin: Point) -> Point:
    """The point farthest from origin."""
    best = points[0]
    for point in points[1:]:
        if point.distance_to(origin) > best.distance_to(origin):
            best = point
    return best


def fibonacci(n: int) -> int:
    """The n-th Fibonacci number."""
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a


if __name__ == "__main__":
    pts = [Point(0, 0), Point(3, 4), Point(-1, 2)]
    print(centroid(pts), farthest(pts, Point(0, 0)), fibonacci(10))
