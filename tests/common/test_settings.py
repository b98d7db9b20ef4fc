"""Domain config classes narrow ``config.Settings``: every field has a setting, and the
defaults are the settings' own (they cannot drift apart)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from config import Settings
from crawler.config import CrawlConfig
from deployments.runtime import local_config
from inference.engines import EngineOptions
from resources.settings import ResourceSettings


def _defaults() -> Settings:
    """The settings' built-in defaults, whatever the environment says."""
    return Settings.model_construct()


def test_crawl_config_is_the_crawl_settings() -> None:
    assert CrawlConfig() == CrawlConfig.from_settings(_defaults())
    assert (
        CrawlConfig().global_concurrency
        == Settings.model_fields["crawl_global_concurrency"].get_default()
    )


def test_engine_options_are_the_inference_settings() -> None:
    assert EngineOptions() == EngineOptions.from_settings(_defaults())
    assert EngineOptions.from_settings(_defaults(), device="cpu", engine=None).device == "cpu"


def test_resource_settings_are_the_resources_settings() -> None:
    """Equal but for what ``from_platform`` resolves (the bin dir found, the admin servers
    derived from the platform's own)."""
    plain = ResourceSettings()
    narrowed = dataclasses.replace(
        ResourceSettings.from_platform(_defaults()),
        pg_bin_dir=plain.pg_bin_dir,
        pg_admin_dsn=plain.pg_admin_dsn,
        redis_admin_url=plain.redis_admin_url,
    )
    assert plain == narrowed


def test_the_local_backend_config_is_the_deploy_settings() -> None:
    narrowed = local_config(_defaults())
    built = dataclasses.replace(narrowed, runtime_dir=Path("x"), base_env={})
    assert built == type(narrowed)(runtime_dir=Path("x"))


def test_the_api_command_carries_the_websocket_options(monkeypatch: pytest.MonkeyPatch) -> None:
    from cli.main import api_command
    from config import get_settings

    command = api_command()
    assert command[command.index("--ws-per-message-deflate") + 1] == "false"
    monkeypatch.setenv("CONVEYOR_API_WS_PER_MESSAGE_DEFLATE", "true")
    get_settings.cache_clear()
    try:
        command = api_command()
        assert command[command.index("--ws-per-message-deflate") + 1] == "true"
    finally:
        monkeypatch.delenv("CONVEYOR_API_WS_PER_MESSAGE_DEFLATE")
        get_settings.cache_clear()
