"""The settings ``strata dev`` gives the services, read back the way each service loads them."""

from __future__ import annotations

import pytest

from strata.agent.settings import AgentSettings
from strata.core.settings import ModeSettings, ServiceSettings, TelemetrySettings, load
from strata.gateway.settings import GatewaySettings
from strata.sdk.dev import child_environment


def _loaded_with(monkeypatch: pytest.MonkeyPatch, environment: dict[str, str]) -> None:
    """The process environment a service would start with: only ``environment``'s STRATA_*."""
    monkeypatch.delenv("STRATA_MODE", raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)


def test_services_run_in_development_with_console_logs_and_find_each_other(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    services = ServiceSettings(provisioner_port=41052, registry_port=41055, streamer_port=41054)

    _loaded_with(monkeypatch, child_environment({}, services))

    assert load(ModeSettings).mode == "development"
    assert load(TelemetrySettings).log_format == "console"
    agent = load(AgentSettings)
    assert agent.provisioner == "127.0.0.1:41052"
    gateway = load(GatewaySettings)
    assert (gateway.registry, gateway.streamer) == ("127.0.0.1:41055", "127.0.0.1:41054")


def test_what_the_developer_set_wins_over_the_defaults() -> None:
    mine = {"STRATA_TELEMETRY_LOG_FORMAT": "json", "STRATA_AGENT_PROVISIONER": "10.0.0.7:50052"}

    environment = child_environment(mine, ServiceSettings())

    assert environment["STRATA_TELEMETRY_LOG_FORMAT"] == "json"
    assert environment["STRATA_AGENT_PROVISIONER"] == "10.0.0.7:50052"
