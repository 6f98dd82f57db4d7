"""Settings as operators write them: environment variables, lists as JSON or `a,b`."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from chatplane.settings import Settings


def settings_from(monkeypatch: pytest.MonkeyPatch, **env: str) -> Settings:
    for name, value in env.items():
        monkeypatch.setenv(f"CHATPLANE_{name}", value)
    return Settings(_env_file=None)  # type: ignore[call-arg]


def test_lists_are_json_or_comma_separated(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = settings_from(
        monkeypatch,
        TRUSTED_PROXIES="127.0.0.1, 10.0.0.0/8",
        CORS_ORIGINS='["https://app.example.com"]',
        LIMITS_FAIL_OPEN_ZONES="chat,admin",
    )
    assert settings.trusted_proxies == ["127.0.0.1", "10.0.0.0/8"]
    assert settings.cors_origins == ["https://app.example.com"]
    assert settings.limits_fail_open_zones == ["chat", "admin"]
    assert settings_from(monkeypatch, TRUSTED_PROXIES="").trusted_proxies == []


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("LIMITS_FAIL_OPEN_ZONES", "chats"),
        ("RATE_LIMIT_IP_ZONES", '{"login": 10}'),
        ("RATE_LIMIT_IP_ZONES", '{"auth": -1}'),
        ("RATE_LIMIT_KEY_RPM", "-5"),
    ],
)
def test_bad_limit_settings_are_refused(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    with pytest.raises(ValidationError):
        settings_from(monkeypatch, **{name: value})
