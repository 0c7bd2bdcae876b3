"""One validated settings object: env vars (``LONGRETRIEVER_*``), optional TOML file, CLI flags."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import (BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict,
                               TomlConfigSettingsSource)

from longretriever.core.errors import ConfigError

CONFIG_ENV = "LONGRETRIEVER_CONFIG"  # path of an optional TOML file with the same keys


class Settings(BaseSettings):
    """Every tunable knob in one place. CLI flags override env vars, which override the TOML
    file, which overrides defaults. docs/configuration.md is generated from these fields
    (``python -m longretriever.docgen config``): every field needs a description."""

    model_config = SettingsConfigDict(env_prefix="LONGRETRIEVER_", extra="forbid", frozen=True)

    bootstrap: str = Field("127.0.0.1:9092", description="Kafka bootstrap servers, "
                           "HOST:PORT[,HOST:PORT...]")
    topic: str = Field("user-events", description="Source topic of user events (msgpack, key = "
                       "user id); kept forever: the state is rebuilt from it")
    dlq_topic: str = Field("user-events.dlq", description="Dead-letter topic: events that fail "
                           "validation, with the reason in the lr.reason header")
    group_id: str = Field("longretriever-stream", description="Kafka consumer group of the stream "
                          "workers (serving processes join it; it decides which one owns a user)")
    state_dir: Path = Field(Path("./state"), description="RocksDB state directory (per-user "
                            "sequences and the consumed offsets)")
    items_path: Path | None = Field(None, description="item_id,category CSV: the item -> context "
                                    "table of the state (none: one context for every item; "
                                    "serving uses the bundle's own table)")

    max_sequence_len: int = Field(100_000, ge=1, le=10_000_000, description="Events kept per "
                                  "user; the oldest are evicted beyond it")
    max_message_bytes: int = Field(1_048_576, ge=64, le=16 * 1_048_576, description="Largest "
                                   "accepted Kafka message; larger ones go to the DLQ")
    max_batch_events: int = Field(4096, ge=1, le=100_000, description="Most events in one "
                                  "micro-batch message; larger ones go to the DLQ")
    segment_events: int = Field(256, ge=16, le=65_536, description="Events per stored segment "
                                "(one RocksDB value per user, context and segment)")
    late_tolerance_ms: int = Field(7 * 24 * 3600 * 1000, ge=0, description="An event older than "
                                   "the user's newest event minus this (ms) goes to the DLQ")
    fetch_max_records: int = Field(20_000, ge=1, description="Most records one consumer fetch "
                                   "(getmany) returns")
    fetch_timeout_ms: int = Field(200, ge=1, description="How long one consumer fetch waits for "
                                  "records (ms)")
    gil_switch_interval_ms: float = Field(
        20.0, gt=0, le=1000, description="Python's GIL switch interval in `stream` and `serve` "
        "(sys.setswitchinterval, ms; Python's default is 5). The stream worker stages batches in "
        "a thread that shares the GIL with the event loop, gRPC and the refresher; measured with "
        "`bench freshness` at 20k msgs/s: 5 ms p99 458 ms, 10 ms 352 ms, 20 ms 256-293 ms, 50 ms "
        "520 ms (Retrieve p99 ~140 ms at 5-20 ms, 228 ms at 50)")
    restore: Literal["source", "changelog"] = Field(
        "source", description="Recovery of a partition this worker never had: source (replay "
        "the source topic from offset 0) or changelog (also publish every state commit to "
        "<topic>.state-changelog in a Kafka transaction and restore from it)")
    standby: bool = Field(False, description="Also follow the changelog of the partitions this "
                          "worker does not own, so taking one over is a short delta restore "
                          "(needs restore=changelog)")

    context_choice: Literal["auto", "frequency", "learned"] = Field(
        "auto", description="How serving picks a user's contexts: frequency (recency-weighted), "
        "learned (the bundle's next-context predictor) or auto (the bundle's own choice, picked "
        "on validation when it was trained)")

    security_protocol: str = Field("PLAINTEXT", description="Kafka security protocol "
                                   "(PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL)")
    sasl_mechanism: str | None = Field(None, description="Kafka SASL mechanism (e.g. PLAIN, "
                                       "SCRAM-SHA-256); none: no SASL")
    sasl_username: str | None = Field(None, description="Kafka SASL user name")
    sasl_password: str | None = Field(None, description="Kafka SASL password")
    ssl_cafile: Path | None = Field(None, description="PEM CA bundle to verify the Kafka "
                                    "brokers' certificates")

    grpc_tls_cert: Path | None = Field(None, description="PEM certificate chain of the gRPC "
                                       "endpoint; with grpc_tls_key the endpoint serves TLS only "
                                       "(serve --tls-cert)")
    grpc_tls_key: Path | None = Field(None, description="PEM private key for grpc_tls_cert "
                                      "(serve --tls-key)")

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
                raise ConfigError(f"{CONFIG_ENV}={path}: no such file (unset it or point it at "
                                  "a TOML file; keys in docs/configuration.md)")
            try:
                sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
            except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
                raise ConfigError(f"{CONFIG_ENV}={path}: not valid TOML: {exc}") from exc
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

