"""One validated settings object: env vars (``LONGRETRIEVER_*``), optional TOML file, CLI flags."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import (BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict,
                               TomlConfigSettingsSource)

CONFIG_ENV = "LONGRETRIEVER_CONFIG"  # path of an optional TOML file with the same keys


class Settings(BaseSettings):
    """Every tunable knob in one place. CLI flags override env vars, which override defaults."""

    model_config = SettingsConfigDict(env_prefix="LONGRETRIEVER_", extra="forbid", frozen=True)

    bootstrap: str = "127.0.0.1:9092"
    topic: str = "user-events"
    dlq_topic: str = "user-events.dlq"
    group_id: str = "longretriever-stream"
    state_dir: Path = Path("./state")
    items_path: Path | None = None

    max_sequence_len: int = Field(100_000, ge=1, le=10_000_000)
    max_message_bytes: int = Field(1_048_576, ge=64, le=16 * 1_048_576)
    max_batch_events: int = Field(4096, ge=1, le=100_000)
    segment_events: int = Field(256, ge=16, le=65_536)
    late_tolerance_ms: int = Field(7 * 24 * 3600 * 1000, ge=0)
    fetch_max_records: int = Field(20_000, ge=1)
    fetch_timeout_ms: int = Field(200, ge=1)
    # recovery of a partition this worker never had: "source" replays the source topic from
    # offset 0; "changelog" also publishes every state commit to <topic>.state-changelog and
    # restores from it (stream.changelog); standby: also follow the changelog of the other
    # partitions, so taking one over is a short delta restore
    restore: Literal["source", "changelog"] = "source"
    standby: bool = False

    # serving: how contexts are chosen (core.multicontext.CHOICE_OPTIONS); "auto" = the choice
    # the bundle records (picked on validation when it was trained)
    context_choice: Literal["auto", "frequency", "learned"] = "auto"

    # Kafka security passthrough (PLAINTEXT by default)
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = None
    ssl_cafile: Path | None = None

    # gRPC TLS (server side): PEM files; both set -> the endpoint serves TLS only
    grpc_tls_cert: Path | None = None
    grpc_tls_key: Path | None = None

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings],
                                   init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource,
                                   dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource):
        """Precedence: CLI flags > LONGRETRIEVER_* env vars > the TOML file > defaults."""
        sources = [init_settings, env_settings]
        path = os.environ.get(CONFIG_ENV)
        if path:
            if not Path(path).is_file():
                raise ValueError(f"{CONFIG_ENV}={path}: no such file")
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)

    @field_validator("bootstrap")
    @classmethod
    def _check_bootstrap(cls, v: str) -> str:
        for part in v.split(","):
            host, _, port = part.strip().rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"bootstrap must be HOST:PORT[,HOST:PORT...], got {v!r}")
        return v

    def kafka_security(self) -> dict[str, Any]:
        """Keyword arguments shared by kafka-python and aiokafka clients."""
        out: dict[str, Any] = {"security_protocol": self.security_protocol}
        if self.sasl_mechanism:
            out.update(
                sasl_mechanism=self.sasl_mechanism,
                sasl_plain_username=self.sasl_username,
                sasl_plain_password=self.sasl_password,
            )
        if self.ssl_cafile:
            out["ssl_cafile"] = str(self.ssl_cafile)
        return out


def load_settings(**overrides: Any) -> Settings:
    """Build settings from env vars plus non-None overrides (CLI flags)."""
    return Settings(**{k: v for k, v in overrides.items() if v is not None})

