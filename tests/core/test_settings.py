"""One validated settings object: flags > env > TOML file > defaults; unknown keys refused."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from longretriever.core.errors import ConfigError
from longretriever.core.settings import Settings, load_settings


def test_precedence_flags_env_file(tmp_path, monkeypatch):
    cfg = tmp_path / "lr.toml"
    cfg.write_text('bootstrap = "file:1"\ntopic = "from-file"\nmax_sequence_len = 500\n')
    monkeypatch.setenv("LONGRETRIEVER_CONFIG", str(cfg))
    monkeypatch.setenv("LONGRETRIEVER_TOPIC", "from-env")
    s = load_settings(max_sequence_len=None)
    assert (s.bootstrap, s.topic, s.max_sequence_len) == ("file:1", "from-env", 500)
    assert load_settings(topic="from-flag").topic == "from-flag"


@pytest.mark.parametrize("bad", [{"bootstrap": "nohost"}, {"bootstrap": "h:99999"},
                                 {"max_sequence_len": 0}, {"no_such_key": 1}])
def test_invalid_settings_are_refused(bad):
    with pytest.raises(ValidationError):
        Settings(**bad)


def test_missing_config_file_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("LONGRETRIEVER_CONFIG", str(tmp_path / "missing.toml"))
    with pytest.raises(ConfigError, match="no such file"):
        Settings()


def test_invalid_toml_is_a_config_error(tmp_path, monkeypatch):
    cfg = tmp_path / "lr.toml"
    cfg.write_text('bootstrap = "a:1"\ntopic = \n')
    monkeypatch.setenv("LONGRETRIEVER_CONFIG", str(cfg))
    with pytest.raises(ConfigError, match="not valid TOML.*line 2"):
        Settings()


def test_security_passthrough():
    s = Settings(security_protocol="SASL_SSL", sasl_mechanism="PLAIN", sasl_username="u",
                 sasl_password="p")
    assert s.kafka_security() == {"security_protocol": "SASL_SSL", "sasl_mechanism": "PLAIN",
                                  "sasl_plain_username": "u", "sasl_plain_password": "p"}
