"""The names the delivery-time project shares between its views, workflow and tasks.

``DELIVERY_NAMESPACE`` (empty by default) is appended to every name, so a test or a
second demo on the same stack runs the whole story beside the first without
reading its topic, views or model.
"""

from __future__ import annotations

import os

NAMESPACE = os.environ.get("DELIVERY_NAMESPACE", "")

ORDERS_TOPIC = f"orders{NAMESPACE}"
"""Raw order events; the streamer keeps the features fresh from it and lands its offline copy."""
WEEKLY_DATASET = f"orders_weekly{NAMESPACE}"
"""A week of finished orders with their delivery times, landed by the warehouse export."""
PREP_VIEW = f"restaurant_prep{NAMESPACE}"
LOAD_VIEW = f"restaurant_load{NAMESPACE}"
MODEL = f"delivery-time{NAMESPACE.replace('_', '-')}"
WORKFLOW = f"delivery-time-weekly{NAMESPACE.replace('_', '-')}"

FEATURES = (f"{PREP_VIEW}:prep_minutes_mean_1d", f"{LOAD_VIEW}:orders_count_1h")
"""What the models read from the feature store, in the order of their inputs."""
REQUEST = ("distance_km",)
"""What the caller supplies with each prediction (request-time inputs)."""
LABEL = "delivery_minutes"

MAX_MAE_MINUTES = 6.0
"""A candidate whose held-out mean absolute error is above this is never deployed."""
