"""Configuration from environment variables (and an optional `.env` file), and the endpoints
and models from those and the `AI_CONFIG` file (read by `providers.config`)."""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
import zoneinfo
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

from dotenv import dotenv_values
from pydantic import (
    AliasChoices,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from providers.config import (
    BUILTIN_ENDPOINTS,
    ENDPOINT_PREFIX,
    ConfigProblem,
    load_catalog,
)
from providers.endpoints import ModelCatalog, ModelSpec, parse_models
from storage import create_store

__all__ = ["ConfigError", "ModelSpec", "Settings", "load_settings", "parse_models"]

DEFAULT_MODELS = "anthropic/claude-sonnet-4-5,anthropic/claude-haiku-4-5"


@dataclass(frozen=True, slots=True)
class ApiKey:
    name: str
    key: str = field(repr=False)


def parse_api_keys(value: object) -> list[ApiKey]:
    """`name:KEY,KEY2`: a key without a name is named after a hash of itself, which stays stable."""
    if isinstance(value, str):
        items = [item.strip() for item in value.split(",") if item.strip()]
    elif isinstance(value, list | tuple):
        return [item if isinstance(item, ApiKey) else parse_api_keys(str(item))[0] for item in value]
    else:
        raise ValueError("must be a comma-separated list of keys, each optionally name:KEY")
    keys: list[ApiKey] = []
    for item in items:
        name, sep, key = item.partition(":")
        if not sep:
            name, key = "key-" + hashlib.sha256(item.encode()).hexdigest()[:8], item
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name):
            raise ValueError("a key name must be 1-64 letters, digits, '.', '-' or '_'")
        if len(key) < 16:
            raise ValueError(f"the key named {name!r} is shorter than 16 characters")
        if any(k.name == name for k in keys):
            raise ValueError(f"the key name {name!r} is used twice")
        keys.append(ApiKey(name, key))
    return keys


PositiveSeconds = Annotated[float, Field(gt=0)]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", populate_by_name=True
    )

    host: str = Field("127.0.0.1", validation_alias=AliasChoices("HOST", "host"))
    port: int = Field(8000, ge=0, le=65535, validation_alias=AliasChoices("PORT", "port"))

    models: Annotated[list[ModelSpec], NoDecode] = Field(
        default_factory=lambda: parse_models(DEFAULT_MODELS),
        validation_alias=AliasChoices("AI_MODELS", "models"),
    )
    # Endpoints and per-model options beyond the built-in ones (see providers/config.py).
    config: Path | None = Field(None, validation_alias=AliasChoices("AI_CONFIG", "config"))
    # The built-in endpoints, set by the variables they have always had.
    anthropic_api_key: SecretStr | None = Field(None, validation_alias=AliasChoices("ANTHROPIC_API_KEY", "anthropic_api_key"))
    anthropic_base_url: str | None = Field(None, validation_alias=AliasChoices("ANTHROPIC_BASE_URL", "anthropic_base_url"))
    openai_api_key: SecretStr | None = Field(None, validation_alias=AliasChoices("OPENAI_API_KEY", "openai_api_key"))
    openai_base_url: str | None = Field(None, validation_alias=AliasChoices("OPENAI_BASE_URL", "openai_base_url"))

    first_token_timeout: PositiveSeconds = Field(20.0, validation_alias=AliasChoices("AI_FIRST_TOKEN_TIMEOUT", "first_token_timeout"))
    request_timeout: PositiveSeconds = Field(120.0, validation_alias=AliasChoices("AI_REQUEST_TIMEOUT", "request_timeout"))
    # Mid-stream silence (after the first text) longer than this ends the attempt.
    idle_timeout: PositiveSeconds = Field(60.0, validation_alias=AliasChoices("AI_IDLE_TIMEOUT", "idle_timeout"))
    connect_timeout: PositiveSeconds = Field(5.0, validation_alias=AliasChoices("AI_CONNECT_TIMEOUT", "connect_timeout"))
    # A 429 whose retry-after is at most this many seconds is retried on the same model once.
    retry_after_max: float = Field(3.0, ge=0, validation_alias=AliasChoices("AI_RETRY_AFTER_MAX", "retry_after_max"))
    keepalive_interval: PositiveSeconds = Field(15.0, validation_alias=AliasChoices("AI_KEEPALIVE_INTERVAL", "keepalive_interval"))
    # /ai/ui/chat: a model failing after its text went out hands over to the next (reset-step).
    restart_on_failure: bool = Field(False, validation_alias=AliasChoices("AI_RESTART_ON_FAILURE", "restart_on_failure"))

    default_max_tokens: int = Field(1024, ge=1, validation_alias=AliasChoices("AI_DEFAULT_MAX_TOKENS", "default_max_tokens"))
    max_tokens_limit: int = Field(8192, ge=1, validation_alias=AliasChoices("AI_MAX_TOKENS_LIMIT", "max_tokens_limit"))
    default_timezone: str = Field("UTC", validation_alias=AliasChoices("AI_DEFAULT_TIMEZONE", "default_timezone"))
    date_context: bool = Field(True, validation_alias=AliasChoices("AI_DATE_CONTEXT", "date_context"))
    # The date context on the OpenAI- and Anthropic-compatible routes (SDK code often brings its own system prompt).
    compat_date_context: bool = Field(True, validation_alias=AliasChoices("AI_COMPAT_DATE_CONTEXT", "compat_date_context"))
    max_body_bytes: int = Field(1_048_576, ge=1024, validation_alias=AliasChoices("AI_MAX_BODY_BYTES", "max_body_bytes"))
    # A request body must arrive within this many seconds (a slow body holds a stream slot).
    body_timeout: PositiveSeconds = Field(10.0, validation_alias=AliasChoices("AI_BODY_TIMEOUT", "body_timeout"))

    database_url: str | None = Field(None, validation_alias=AliasChoices("DATABASE_URL", "database_url"))
    history_limit: int = Field(50, ge=0, le=1000, validation_alias=AliasChoices("AI_HISTORY_LIMIT", "history_limit"))
    # Characters of stored history replayed with a new turn (the turn itself included).
    history_max_chars: int = Field(400_000, ge=1000, validation_alias=AliasChoices("AI_HISTORY_MAX_CHARS", "history_max_chars"))
    # Tokens of a thread's prompt (system prompt, replayed history, new turn); a model's own
    # `history_token_budget` wins for requests that start at it. None: characters only.
    history_token_budget: int | None = Field(
        None, ge=100, validation_alias=AliasChoices("AI_HISTORY_TOKEN_BUDGET", "history_token_budget")
    )
    # The model that summarizes the turns the budget leaves out (one of the configured models); None: off.
    summary_model: str | None = Field(None, min_length=1, validation_alias=AliasChoices("AI_SUMMARY_MODEL", "summary_model"))
    # Claude's prompt cache: `auto` marks the stable prefix (5 minutes), `1h` the same for an hour, `off` never.
    prompt_cache: Literal["auto", "off", "1h"] = Field("auto", validation_alias=AliasChoices("AI_PROMPT_CACHE", "prompt_cache"))
    # A process that has not heart-beaten (every AI_STORAGE_CHECK_INTERVAL) for this long is taken
    # for dead, and the answers it left `pending` are closed as `interrupted`.
    writer_stale_after: float = Field(30.0, ge=1, validation_alias=AliasChoices("AI_WRITER_STALE_AFTER", "writer_stale_after"))
    # How often the text of answers in progress is written to their rows (what a crash can lose).
    partial_flush_interval: PositiveSeconds = Field(1.0, validation_alias=AliasChoices("AI_PARTIAL_FLUSH_INTERVAL", "partial_flush_interval"))
    storage_check_interval: PositiveSeconds = Field(5.0, validation_alias=AliasChoices("AI_STORAGE_CHECK_INTERVAL", "storage_check_interval"))
    shutdown_write_timeout: PositiveSeconds = Field(10.0, validation_alias=AliasChoices("AI_SHUTDOWN_WRITE_TIMEOUT", "shutdown_write_timeout"))

    # Safe to expose: who may call, from where, how much.
    api_keys: Annotated[list[ApiKey], NoDecode] = Field(default_factory=list, validation_alias=AliasChoices("AI_API_KEYS", "api_keys"))
    allow_unauthenticated: bool = Field(False, validation_alias=AliasChoices("AI_ALLOW_UNAUTHENTICATED", "allow_unauthenticated"))
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list, validation_alias=AliasChoices("AI_CORS_ORIGINS", "cors_origins"))
    max_messages: int = Field(200, ge=1, validation_alias=AliasChoices("AI_MAX_MESSAGES", "max_messages"))
    max_input_chars: int = Field(400_000, ge=1, validation_alias=AliasChoices("AI_MAX_INPUT_CHARS", "max_input_chars"))
    # Per client (key or address) limits are off by default: a backend puts all its users behind
    # one key, and the total below already protects the process.
    rate_limit_rpm: int = Field(0, ge=0, validation_alias=AliasChoices("AI_RATE_LIMIT_RPM", "rate_limit_rpm"))
    max_concurrent_streams: int = Field(0, ge=0, validation_alias=AliasChoices("AI_MAX_CONCURRENT_STREAMS", "max_concurrent_streams"))
    max_total_streams: int = Field(1000, ge=0, validation_alias=AliasChoices("AI_MAX_TOTAL_STREAMS", "max_total_streams"))
    # Per end user (a request's `user_id` under its key), for backends that forward their users.
    user_rate_limit_rpm: int = Field(0, ge=0, validation_alias=AliasChoices("AI_USER_RATE_LIMIT_RPM", "user_rate_limit_rpm"))
    user_max_concurrent_streams: int = Field(
        0, ge=0, validation_alias=AliasChoices("AI_USER_MAX_CONCURRENT_STREAMS", "user_max_concurrent_streams")
    )
    auth_failures_per_minute: int = Field(
        30, ge=0, validation_alias=AliasChoices("AI_AUTH_FAILURES_PER_MINUTE", "auth_failures_per_minute")
    )
    cooldown_failures: int = Field(3, ge=1, validation_alias=AliasChoices("AI_COOLDOWN_FAILURES", "cooldown_failures"))
    cooldown_seconds: float = Field(30.0, ge=0, validation_alias=AliasChoices("AI_COOLDOWN_SECONDS", "cooldown_seconds"))
    # Shared state across replicas (resumable answers, limits, leases, circuits); None: per process.
    redis_url: str | None = Field(None, min_length=1, validation_alias=AliasChoices("REDIS_URL", "redis_url"))
    # Every key the service writes starts with it: replicas of one deployment share it, others sharing the Redis do not.
    redis_key_prefix: str = Field("ai-stream:", min_length=1, validation_alias=AliasChoices("AI_REDIS_KEY_PREFIX", "redis_key_prefix"))
    redis_check_interval: PositiveSeconds = Field(1.0, validation_alias=AliasChoices("AI_REDIS_CHECK_INTERVAL", "redis_check_interval"))
    # How long a replica's open-stream slot outlives it on Redis when it dies without giving it back
    # (refreshed every third of it while the stream runs).
    lease_ttl: float = Field(30.0, ge=0.3, le=3600, validation_alias=AliasChoices("AI_LEASE_TTL", "lease_ttl"))
    # The most a request waits on Redis for a limit before it falls back to this process's own count.
    redis_limit_timeout: PositiveSeconds = Field(
        0.25, le=5, validation_alias=AliasChoices("AI_REDIS_LIMIT_TIMEOUT", "redis_limit_timeout")
    )
    # Resumable answers (see service/resumable.py): how long an answer nobody reads keeps being
    # generated, how long an ended one stays replayable, and the memory their events may hold.
    resume_abandon_after: PositiveSeconds = Field(
        30.0, validation_alias=AliasChoices("AI_RESUME_ABANDON_AFTER", "resume_abandon_after")
    )
    resume_retention: PositiveSeconds = Field(300.0, validation_alias=AliasChoices("AI_RESUME_RETENTION", "resume_retention"))
    resume_buffer_bytes: int = Field(
        2_097_152, ge=4096, validation_alias=AliasChoices("AI_RESUME_BUFFER_BYTES", "resume_buffer_bytes")
    )
    resume_max_bytes: int = Field(
        134_217_728, ge=4096, validation_alias=AliasChoices("AI_RESUME_MAX_BYTES", "resume_max_bytes")
    )
    # With REDIS_URL: how often the events of answers in progress are appended to Redis, in one pipeline.
    resume_flush_interval: PositiveSeconds = Field(
        0.05, validation_alias=AliasChoices("AI_RESUME_FLUSH_INTERVAL", "resume_flush_interval")
    )
    workers: int = Field(1, ge=1, le=64, validation_alias=AliasChoices("AI_WORKERS", "workers"))
    # The event loop `python -m service` runs on; None: uvloop when it is installed, else asyncio's.
    event_loop: Literal["uvloop", "asyncio"] | None = Field(None, validation_alias=AliasChoices("AI_EVENT_LOOP", "event_loop"))
    metrics_public: bool = Field(True, validation_alias=AliasChoices("AI_METRICS_PUBLIC", "metrics_public"))
    shutdown_grace: float = Field(25.0, ge=0, validation_alias=AliasChoices("AI_SHUTDOWN_GRACE", "shutdown_grace"))
    # New answers are refused (503 overloaded) while the event loop's smoothed lag is over this
    # many milliseconds (see service/overload.py); 0: never.
    shed_loop_lag_ms: float = Field(50.0, ge=0, validation_alias=AliasChoices("AI_SHED_LOOP_LAG_MS", "shed_loop_lag_ms"))

    # The page at `/` (playground and live status); `false` answers 404 there.
    playground: bool = Field(True, validation_alias=AliasChoices("AI_PLAYGROUND", "playground"))

    log_level: Literal["debug", "info", "warning", "error"] = Field("info", validation_alias=AliasChoices("AI_LOG_LEVEL", "log_level"))
    log_format: Literal["json", "console"] | None = Field(None, validation_alias=AliasChoices("AI_LOG_FORMAT", "log_format"))

    @field_validator("models", mode="before")
    @classmethod
    def _parse_models(cls, value: object) -> list[ModelSpec]:
        return parse_models(value)

    @field_validator("api_keys", mode="before")
    @classmethod
    def _parse_keys(cls, value: object) -> list[ApiKey]:
        return parse_api_keys(value)

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _parse_origins(cls, value: object) -> list[str]:
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list | tuple):
            raise ValueError("must be a comma-separated list of origins")
        origins = [str(item).strip().rstrip("/") for item in items if str(item).strip()]
        for origin in origins:
            if origin != "*" and not re.fullmatch(r"https?://[^/\s]+", origin):
                raise ValueError(f"{origin!r} is not an origin such as https://app.example.com (or *)")
        return origins

    @field_validator("default_timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{value!r} is not a known IANA time zone") from None
        return value

    @field_validator("log_level", "log_format", "prompt_cache", "event_loop", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    _catalog: ModelCatalog | None = PrivateAttr(default=None)

    @property
    def catalog(self) -> ModelCatalog:
        """The endpoints and the chain's models with their options (read once, by `load_settings`)."""
        if self._catalog is None:
            self._catalog = _load_catalog(self)
        return self._catalog

    def max_tokens_limit_for(self, requested: str | None) -> int:
        """The most `max_tokens` a request may ask for: the named model's limit, if it names one."""
        info = self.catalog.resolve(requested) if requested is not None else None
        return info.options.max_tokens_limit if info is not None else self.max_tokens_limit


# Field name -> environment variable, for error messages that name what the operator set.
ENV_NAMES = {
    name: next(a for a in field.validation_alias.choices if isinstance(a, str) and a.isupper())  # type: ignore[union-attr]
    for name, field in Settings.model_fields.items()
}


class ConfigError(Exception):
    """A setting is wrong; the message names the environment variable and is safe to print."""


def load_settings(**overrides: object) -> Settings:
    try:
        settings = Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        first = exc.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else ""
        env = ENV_NAMES.get(field, field.upper())
        message = first["msg"].removeprefix("Value error, ")
        raise ConfigError(f"invalid setting {env}: {message}") from None
    settings.catalog  # noqa: B018  (read now: a mistake stops the start)
    try:
        create_store(settings.database_url)
    except ValueError as exc:
        raise ConfigError(f"invalid setting DATABASE_URL: {exc}") from None
    if not settings.api_keys and not settings.allow_unauthenticated and not is_loopback(settings.host):
        raise ConfigError(
            f"refusing to listen on HOST={settings.host} without AI_API_KEYS; set AI_API_KEYS, "
            "or AI_ALLOW_UNAUTHENTICATED=true for a private network"
        )
    if settings.workers > 1 and settings.port == 0:
        raise ConfigError("invalid setting AI_WORKERS: several workers need a fixed PORT, not 0")
    if settings.default_max_tokens > settings.max_tokens_limit:
        raise ConfigError("invalid setting AI_DEFAULT_MAX_TOKENS: must not exceed AI_MAX_TOKENS_LIMIT")
    if settings.summary_model is not None:
        info = settings.catalog.resolve(settings.summary_model)
        if info is None:
            configured = ", ".join(settings.catalog.names())
            raise ConfigError(f"invalid setting AI_SUMMARY_MODEL: {settings.summary_model[:100]!r} is not a configured model; choose one of: {configured}")
    return settings


def _load_catalog(settings: Settings) -> ModelCatalog:
    dotenv = settings.model_config.get("env_file")
    environ = {
        name: value
        for name, value in {**(dotenv_values(dotenv) if isinstance(dotenv, str) else {}), **os.environ}.items()
        if name.startswith(ENDPOINT_PREFIX) and value is not None
    }
    field_of = {env: name for name, env in ENV_NAMES.items()}
    builtin_values: dict[str, str | None] = {}
    for builtin in BUILTIN_ENDPOINTS.values():
        for variable in (builtin.api_key_variable, builtin.base_url_variable):
            value = getattr(settings, field_of[variable])
            builtin_values[variable] = value.get_secret_value() if isinstance(value, SecretStr) else value
    try:
        return load_catalog(
            models=settings.models if "models" in settings.model_fields_set else None,
            default_models=parse_models(DEFAULT_MODELS),
            environ=environ,
            builtin_values=builtin_values,
            config_path=settings.config,
            first_token_timeout=settings.first_token_timeout,
            max_tokens_limit=settings.max_tokens_limit,
        )
    except ConfigProblem as exc:
        raise ConfigError(str(exc)) from None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
