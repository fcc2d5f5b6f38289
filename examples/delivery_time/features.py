"""The feature views of the delivery-time project: how busy and how slow a restaurant is.

Both read the ``orders`` topic: the streamer computes them online from it, and the
point-in-time training sets compute them from its offline copy, with this one
definition.
"""

from __future__ import annotations

from project import LOAD_VIEW, ORDERS_TOPIC, PREP_VIEW

from strata.sdk.features import (
    Aggregate,
    Entity,
    FeatureView,
    Field,
    Float64,
    Int64,
    Timestamp,
    Topic,
)

restaurant = Entity("restaurant", join_keys=("restaurant_id",))

orders = Topic(
    ORDERS_TOPIC,
    schema=[
        Field("order_id", Int64),
        Field("restaurant_id", Int64),
        Field("event_time", Timestamp),
        Field("prep_minutes", Float64),
    ],
)

restaurant_prep = FeatureView(
    PREP_VIEW,
    entities=[restaurant],
    source=orders,
    event_time="event_time",
    features=[Aggregate("mean", "1d", column="prep_minutes", default=15.0)],
    description="How long the restaurant took to prepare a meal over the previous day.",
    owner="delivery-team",
)

restaurant_load = FeatureView(
    LOAD_VIEW,
    entities=[restaurant],
    source=orders,
    event_time="event_time",
    features=[Aggregate("count", "1h", name="orders_count_1h", default=0)],
    description="How many orders the restaurant took in the last hour.",
    owner="delivery-team",
)
