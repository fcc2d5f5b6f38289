"""Queue settings as ApplyQueue takes them (strata.provisioner.domain.queues)."""

from __future__ import annotations

import pytest

from strata.provisioner.domain.queues import QueueError, Quota, parse_quota, queue_policy
from strata.provisioner.domain.resources import Resources

GIB = 2**30


@pytest.mark.parametrize(
    ("quota", "expected"),
    [
        ({"cpu": "500m"}, Quota(cpu_millis=500)),
        ({"cpu": "2.5"}, Quota(cpu_millis=2500)),
        ({"cpu": "0.1"}, Quota(cpu_millis=100)),
        ({"memory": "8Gi"}, Quota(memory_bytes=8 * GIB)),
        ({"memory": "1.5Gi", "gpu": "1"}, Quota(memory_bytes=3 * GIB // 2, gpus=1)),
        ({"memory": "1G"}, Quota(memory_bytes=10**9)),
        ({}, Quota()),
    ],
)
def test_quotas_read_as_kubernetes_quantities(quota: dict[str, str], expected: Quota) -> None:
    assert parse_quota(quota) == expected


@pytest.mark.parametrize(
    ("quota", "field", "expected"),
    [
        ({"cpu": "lots"}, "quota.cpu", "is not a quantity"),
        ({"cpu": "0.0001"}, "quota.cpu", "too fine"),
        ({"memory": "-1Gi"}, "quota.memory", "negative"),
        ({"memory": "8GB"}, "quota.memory", "is not a quantity"),
        ({"gpu": "0.5"}, "quota.gpu", "whole number of GPUs"),
        ({"disk": "10Gi"}, "quota.disk", "unknown resource"),
    ],
)
def test_a_wrong_quota_is_refused_naming_the_field(
    quota: dict[str, str], field: str, expected: str
) -> None:
    with pytest.raises(QueueError) as refused:
        parse_quota(quota)

    assert refused.value.field == field
    assert expected in refused.value.message


def test_a_quota_allows_up_to_its_limits_on_the_kinds_it_limits() -> None:
    quota = Quota(cpu_millis=4000, gpus=1)

    assert quota.allows(Resources(4000, 100 * GIB, 1))
    assert not quota.allows(Resources(4001, 0, 0))
    assert not quota.allows(Resources(0, 0, 2))
    assert Quota().unlimited
    assert Quota().as_resources() is None


def test_a_queue_policy_defaults_weight_one_and_checks_every_field() -> None:
    policy = queue_policy("team-a", {"cpu": "4"}, 0, 3)

    assert (policy.weight, policy.max_running_per_user) == (1.0, 3)
    for name, weight, cap, field in [
        ("Team_A", 1, 0, "name"),
        ("team-a", -2, 0, "weight"),
        ("team-a", float("nan"), 0, "weight"),
        ("team-a", 1, -1, "max_running_per_user"),
    ]:
        with pytest.raises(QueueError) as refused:
            queue_policy(name, {}, weight, cap)
        assert refused.value.field == field


@pytest.mark.parametrize(
    "quota",
    [
        {"cpu": "500m", "memory": "8Gi"},
        {"cpu": "4", "gpu": "0"},
        {"memory": "1536Mi"},
        {"memory": "1000"},
        {},
    ],
)
def test_a_quota_reads_back_as_applied(quota: dict[str, str]) -> None:
    assert parse_quota(quota).as_quantities() == quota
