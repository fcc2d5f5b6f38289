"""Who may call which method, and which calls a client retries."""

from __future__ import annotations

import json

import pytest

from strata.api.registry.v1 import registry_pb2
from strata.core.errors import ConfigError
from strata.core.rpc.auth import ADMIN_ROLE, AccessPolicy, Principal, TokenBook, is_open
from strata.core.rpc.client import retry_config
from strata.core.rpc.server import Service, access_policy

REGISTRY = registry_pb2.DESCRIPTOR.services_by_name["ModelRegistryService"].full_name


def _ignore(server: object) -> None:
    pass


POLICY = access_policy(
    [Service(REGISTRY, _ignore, roles={"GetModel": ["reader", "deployer"], "*": ["deployer"]})]
)


def test_a_listed_method_takes_its_own_roles() -> None:
    assert POLICY.roles_for(f"/{REGISTRY}/GetModel") == {"reader", "deployer"}


def test_other_methods_of_the_service_take_its_wildcard_roles() -> None:
    assert POLICY.roles_for(f"/{REGISTRY}/DeleteModel") == {"deployer"}


def test_a_method_nobody_listed_is_admin_only() -> None:
    policy = AccessPolicy({})
    assert policy.roles_for("/strata.other.v1.Other/Do") == frozenset()
    assert not Principal("ana", frozenset({"reader"})).may(frozenset())
    assert Principal("root", frozenset({ADMIN_ROLE})).may(frozenset())


def test_asking_again_gives_the_same_roles_for_every_method() -> None:
    """The roles of each method are kept once worked out; asking again changes nothing,
    and a method asked for after many unknown ones is still answered by the rules."""
    for n in range(5_000):
        assert POLICY.roles_for(f"/strata.other.v1.Other/Do{n}") == frozenset()
    for _ in range(2):
        assert POLICY.roles_for(f"/{REGISTRY}/GetModel") == {"reader", "deployer"}
        assert POLICY.roles_for(f"/{REGISTRY}/DeleteModel") == {"deployer"}


def test_a_token_is_known_by_its_text_after_its_first_use_and_others_stay_unknown() -> None:
    ana = Principal("ana", frozenset({"reader"}))
    book = TokenBook({"ana-token": ana, "bob-token": Principal("bob", frozenset())})
    for _ in range(2):
        assert book.principal_of("ana-token") is ana
        assert book.principal_of("ana-tokem") is None
        assert book.principal_of("") is None
    assert book.principal_of("bob-token") == Principal("bob", frozenset())


def test_a_principal_needs_only_one_of_the_roles() -> None:
    assert Principal("ci", frozenset({"deployer", "trainer"})).may({"reader", "deployer"})


def test_health_and_both_reflection_versions_are_open() -> None:
    assert is_open("/grpc.health.v1.Health/Check")
    assert is_open("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo")
    assert is_open("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo")
    assert not is_open(f"/{REGISTRY}/GetModel")
    assert not is_open("/grpc.health.v1.HealthX/Check")


def test_retries_apply_to_the_named_idempotent_calls_only() -> None:
    config = json.loads(retry_config([REGISTRY + "/GetModel", "strata.scheduler.v1.Scheduler"]))
    (method_config,) = config["methodConfig"]
    assert method_config["name"] == [
        {"service": REGISTRY, "method": "GetModel"},
        {"service": "strata.scheduler.v1.Scheduler"},
    ]
    assert method_config["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE"]
    assert json.loads(retry_config([])) == {}


def test_a_misspelled_method_in_a_role_list_is_an_error_naming_it_and_the_service() -> None:
    with pytest.raises(ConfigError) as caught:
        Service(REGISTRY, _ignore, roles={"GetModle": ["reader"], "GetModel": ["reader"]})
    message = str(caught.value)
    assert "GetModle" in message
    assert REGISTRY in message
    assert "GetModel" in message.partition("its methods are:")[2]  # what was meant is listed


def test_an_unknown_service_name_is_an_error_naming_it() -> None:
    with pytest.raises(ConfigError, match=r"'strata\.registry\.v1\.ModelRegistry' is unknown"):
        Service("strata.registry.v1.ModelRegistry", _ignore, roles={"*": ["reader"]})
