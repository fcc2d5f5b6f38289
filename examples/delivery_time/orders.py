"""A deterministic, seeded generator of a food-delivery team's orders.

Twelve restaurants, each with its own preparation time; orders come in more at
lunch and dinner. An order's delivery time is its restaurant's preparation time,
plus the ride (distance matters), plus waiting when the restaurant is busy. Two
known worlds alternate by week:

- odd weeks are **linear**: every effect adds up in proportion, so the linear
  model (A) fits them as well as anything and boosting (B) only adds variance;
- even weeks have a **bridge**: rides longer than 6 km cross it and take 12 minutes
  more, and a busy restaurant's queue grows faster than its order count: a step
  and a curve that boosting finds and a straight line cannot.

So week 1 makes A the champion and week 2 swaps it for B. The same week number and
start always give the same rows.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import pyarrow as pa

RESTAURANTS = 12
ORDERS_PER_WEEK = 1400
BRIDGE_KM = 6.0

_HOUR_WEIGHTS = np.array(
    [1, 1, 1, 1, 1, 1, 2, 3, 4, 5, 6, 12, 16, 12, 6, 5, 5, 8, 14, 16, 12, 8, 4, 2], dtype=float
)


def restaurant_prep_minutes(seed: int = 7) -> np.ndarray:
    """Each restaurant's typical preparation time, fixed for the project."""
    return np.random.default_rng(seed).uniform(8.0, 26.0, RESTAURANTS).round(1)


def week(number: int, start: datetime) -> pa.Table:
    """Week ``number`` of orders from ``start`` (a tz-aware datetime), sorted by time.

    Columns: order_id, restaurant_id, event_time, prep_minutes, distance_km,
    delivery_minutes (the label, known once the order is delivered).
    """
    rng = np.random.default_rng(1000 + number)
    prep = restaurant_prep_minutes()
    n = ORDERS_PER_WEEK
    hours = rng.choice(24 * 7, size=n, p=np.tile(_HOUR_WEIGHTS, 7) / _HOUR_WEIGHTS.sum() / 7)
    seconds = np.sort(hours * 3600 + rng.integers(0, 3600, size=n))
    popularity = rng.dirichlet(np.full(RESTAURANTS, 2.0))
    restaurant = rng.choice(RESTAURANTS, size=n, p=popularity)
    prep_minutes = np.maximum(2.0, prep[restaurant] + rng.normal(0.0, 2.0, n)).round(2)
    distance = rng.uniform(0.5, 10.0, n).round(2)
    load = _orders_in_last_hour(restaurant, seconds)
    if number % 2:
        delivery = 4.0 + prep[restaurant] + 2.5 * distance + 0.8 * load
    else:
        bridge = np.where(distance > BRIDGE_KM, 12.0, 0.0)
        queue = 0.9 * np.maximum(0.0, load - 2.0) ** 2
        delivery = 4.0 + prep[restaurant] + 2.5 * distance + bridge + queue
    delivery = (delivery + rng.normal(0.0, 1.5, n)).round(2)
    times = [start + timedelta(seconds=int(s)) for s in seconds]
    return pa.table(
        {
            "order_id": pa.array(number * 1_000_000 + np.arange(n), pa.int64()),
            "restaurant_id": pa.array(restaurant, pa.int64()),
            "event_time": pa.array(times, pa.timestamp("us", tz="UTC")),
            "prep_minutes": pa.array(prep_minutes, pa.float64()),
            "distance_km": pa.array(distance, pa.float64()),
            "delivery_minutes": pa.array(delivery, pa.float64()),
        }
    )


def live(count: int, now: datetime, seed: int = 0) -> pa.Table:
    """``count`` orders placed at ``now``, for the online path (no label yet)."""
    rng = np.random.default_rng(seed)
    prep = restaurant_prep_minutes()
    restaurant = np.arange(count) % RESTAURANTS
    return pa.table(
        {
            "order_id": pa.array(9_000_000_000 + seed * 10_000 + np.arange(count), pa.int64()),
            "restaurant_id": pa.array(restaurant, pa.int64()),
            "event_time": pa.array([now] * count, pa.timestamp("us", tz="UTC")),
            "prep_minutes": pa.array(
                np.maximum(2.0, prep[restaurant] + rng.normal(0.0, 2.0, count)).round(2),
                pa.float64(),
            ),
        }
    )


def _orders_in_last_hour(restaurant: np.ndarray, seconds: np.ndarray) -> np.ndarray:
    """For each order, its restaurant's orders in the hour up to it (itself included),
    as the ``orders_count_1h`` feature counts them."""
    load = np.zeros(len(seconds))
    for r in np.unique(restaurant):
        rows = np.flatnonzero(restaurant == r)
        times = seconds[rows]
        first = np.searchsorted(times, times - 3600, side="right")
        load[rows] = np.arange(len(rows)) - first + 1
    return load
