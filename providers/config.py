"""Reading the endpoints and the chain's models: `AI_ENDPOINT_<NAME>_*` variables and the
`AI_CONFIG` TOML file.

Precedence, per field: an `AI_ENDPOINT_<NAME>_*` variable, then a built-in endpoint's own
variable (`ANTHROPIC_API_KEY`...), then the file. Every mistake is one `ConfigProblem` that names
the variable, or the file and line, to fix; no value that may be a secret is repeated in it.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from providers.dialects import ADAPTERS
from providers.endpoints import (
    NAME_PATTERN,
    Endpoint,
    ModelCatalog,
    ModelInfo,
    ModelOptions,
    parse_models,
)

ENDPOINT_PREFIX = "AI_ENDPOINT_"
# Variable suffix -> endpoint field, longest first where one suffix ends another (`_API_KEY`, `_API`).
ENV_FIELDS = {"API_KEY": "api_key", "BASE_URL": "base_url", "MAX_TOKENS_FIELD": "max_tokens_field", "HEADERS": "headers", "API": "api"}
ENDPOINT_KEYS = ("api", "base_url", "api_key", "headers", "max_tokens_field")
MODEL_KEYS = ("name", "alias", "first_token_timeout", "max_tokens_limit", "temperature", "history_token_budget")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,128}")
_FIELD_NAME = re.compile(r"[a-z_]{1,64}")
_ALIAS = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}")


@dataclass(frozen=True, slots=True)
class BuiltIn:
    api: str
    api_key_variable: str
    base_url_variable: str
    # The max_tokens field of the vendor's own API, when no base URL points elsewhere.
    own_max_tokens_field: str | None = None


# Endpoints that exist without configuration, set by the variables they have always had.
BUILTIN_ENDPOINTS = {
    "anthropic": BuiltIn("anthropic", "ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL"),
    # OpenAI's own API wants `max_completion_tokens`; a compatible server (a base URL) knows `max_tokens`.
    "openai": BuiltIn("openai", "OPENAI_API_KEY", "OPENAI_BASE_URL", own_max_tokens_field="max_completion_tokens"),
}


class ConfigProblem(Exception):
    def __init__(self, variable: str, message: str) -> None:
        super().__init__(f"invalid setting {variable}: {message}")


@dataclass(frozen=True, slots=True)
class Source:
    """Where a value was set: a variable, or a line of the file (`AI_CONFIG`)."""

    variable: str
    place: str = ""  # "path line N" for the file

    def problem(self, message: str) -> ConfigProblem:
        return ConfigProblem(self.variable, f"{self.place}: {message}" if self.place else message)


class ConfigFile:
    """The parsed TOML file, and the lines its tables and keys are on (for messages)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigProblem("AI_CONFIG", f"cannot read {path}: {exc.strerror or type(exc).__name__}") from None
        except UnicodeDecodeError:
            raise ConfigProblem("AI_CONFIG", f"{path} is not UTF-8 text") from None
        try:
            self.data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            found = re.fullmatch(r"(.*) \(at line (\d+), column (\d+)\)", str(exc))
            where = f"{path} line {found[2]}, column {found[3]}: {found[1]}" if found else f"{path}: {exc}"
            raise ConfigProblem("AI_CONFIG", where) from None
        self.lines = text.splitlines()

    def source(self, line: int | None = None) -> Source:
        return Source("AI_CONFIG", f"{self.path} line {line}" if line else str(self.path))

    def table_line(self, header: str, nth: int = 0) -> int | None:
        """The line of the `nth` table header matching the regular expression `header`."""
        pattern = re.compile(rf"\s*{header}\s*(#.*)?")
        found = [i + 1 for i, line in enumerate(self.lines) if pattern.fullmatch(line)]
        return found[nth] if nth < len(found) else None

    def key_source(self, table: int | None, key: str) -> Source:
        """Where `key` is set in the table whose header is on line `table` (else the table itself)."""
        pattern = re.compile(rf"\s*[\"']?{re.escape(key)}[\"']?\s*=")
        for number in range((table or 0) + 1, len(self.lines) + 1):
            line = self.lines[number - 1]
            if line.lstrip().startswith("["):
                break
            if pattern.match(line):
                return self.source(number)
        return self.source(table)


def load_catalog(
    *,
    models: Sequence[str] | None,
    default_models: Sequence[str],
    environ: Mapping[str, str],
    builtin_values: Mapping[str, str | None],
    config_path: Path | None,
    first_token_timeout: float,
    max_tokens_limit: int,
) -> ModelCatalog:
    """The endpoints and the chain. `models`: `AI_MODELS` when set (else the file's `[[models]]`,
    else `default_models`); `environ`: the `AI_ENDPOINT_*` variables; `builtin_values`: the
    built-in endpoints' own variables by name."""
    file = ConfigFile(config_path) if config_path is not None else None
    data: dict[str, Any] = file.data if file is not None else {}
    if file is not None:
        for key in data:
            if key not in ("endpoints", "models"):
                raise file.source(file.table_line(rf"\[+\s*{re.escape(key)}\b.*")).problem(
                    f"unknown key {key[:64]!r} (known: endpoints, models)"
                )
    fields = _file_endpoints(file, data.get("endpoints", {})) if file is not None else {}
    for name, builtin in BUILTIN_ENDPOINTS.items():
        for field, variable in (("api_key", builtin.api_key_variable), ("base_url", builtin.base_url_variable)):
            if builtin_values.get(variable):
                fields.setdefault(name, {})[field] = (builtin_values[variable], Source(variable))
    for name, values in _env_endpoints(environ).items():
        fields.setdefault(name, {}).update(values)
    endpoints = {name: _endpoint(name, fields.get(name, {})) for name in {*BUILTIN_ENDPOINTS, *fields}}

    entries = dict(_file_models(file, data.get("models", []))) if file is not None else {}
    if models is not None:
        chain, chain_source = list(models), Source("AI_MODELS")
        for spec, unused in entries.items():
            if spec not in chain:
                raise unused.name.problem(f"model {spec[:100]!r} is not in AI_MODELS")
    elif entries:
        chain, chain_source = list(entries), None
    else:
        chain, chain_source = list(default_models), Source("AI_MODELS")
    infos: list[ModelInfo] = []
    for spec in parse_models(chain):
        entry = entries.get(spec)
        endpoint = endpoints.get(spec.endpoint)
        if endpoint is None:
            source = chain_source or (entry.name if entry is not None else Source("AI_MODELS"))
            known = ", ".join(sorted(endpoints))
            raise source.problem(f"unknown endpoint {spec.endpoint[:64]!r} in {spec[:100]!r} (known: {known})")
        defaults = ModelOptions(first_token_timeout, max_tokens_limit)
        infos.append(ModelInfo(str(spec), endpoint, spec.model, _options(spec, entry, defaults)))
    _check_aliases(infos, entries)
    used = {info.endpoint.name for info in infos}
    listed = tuple(e for e in endpoints.values() if e.name in used or not e.builtin)
    return ModelCatalog(tuple(sorted(listed, key=lambda e: e.name)), tuple(infos))


Fields = dict[str, tuple[Any, Source]]


@dataclass(frozen=True, slots=True)
class Entry:
    """One `[[models]]` entry: its options, and where its name and its alias are."""

    options: dict[str, Any]
    name: Source
    alias: Source
    limit: Source


def _env_endpoints(environ: Mapping[str, str]) -> dict[str, Fields]:
    endpoints: dict[str, Fields] = {}
    for variable, value in environ.items():
        if not variable.startswith(ENDPOINT_PREFIX):
            continue
        rest = variable[len(ENDPOINT_PREFIX) :]
        suffix = next((s for s in ENV_FIELDS if rest.endswith("_" + s) and len(rest) > len(s) + 1), None)
        if suffix is None:
            raise ConfigProblem(variable, "not an endpoint setting; use AI_ENDPOINT_<NAME>_API, _BASE_URL, _API_KEY, _HEADERS or _MAX_TOKENS_FIELD")
        name = rest[: -len(suffix) - 1].lower()
        if not NAME_PATTERN.fullmatch(name):
            raise ConfigProblem(variable, "the endpoint name must be letters, digits and '_' (at most 64)")
        if value.strip():
            field = ENV_FIELDS[suffix]
            parsed = _headers_json(value, variable) if field == "headers" else value.strip()
            endpoints.setdefault(name, {})[field] = (parsed, Source(variable))
    return endpoints


def _headers_json(value: str, variable: str) -> dict[str, Any]:
    try:
        headers = json.loads(value)
    except ValueError as exc:
        message = f"{exc.msg} at column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else "not JSON"
        raise ConfigProblem(variable, f"not valid JSON ({message}); expected an object such as {{\"X-Title\": \"my app\"}}") from None
    if not isinstance(headers, dict):
        raise ConfigProblem(variable, "must be a JSON object of header names to values, such as {\"X-Title\": \"my app\"}")
    return headers


def _file_endpoints(file: ConfigFile, tables: Any) -> dict[str, Fields]:
    if not isinstance(tables, dict):
        raise file.source(file.table_line(r"endpoints\s*=.*")).problem("endpoints must be a table of [endpoints.<name>] tables")
    endpoints: dict[str, Fields] = {}
    for name, table in tables.items():
        line = file.table_line(rf"\[\s*endpoints\s*\.\s*[\"']?{re.escape(name)}[\"']?\s*\]")
        if not NAME_PATTERN.fullmatch(name):
            raise file.source(line).problem(f"endpoint name {name[:64]!r} must be lower-case letters, digits, '_' or '-' (at most 64)")
        if not isinstance(table, dict):
            raise file.source(line).problem(f"endpoints.{name} must be a table")
        values: Fields = {}
        for key, value in table.items():
            source = file.key_source(line, key)
            if key not in ENDPOINT_KEYS:
                raise source.problem(f"unknown key {key[:64]!r} in [endpoints.{name}] (known: {', '.join(ENDPOINT_KEYS)})")
            if key == "headers" and not isinstance(value, dict):
                raise source.problem("headers must be a table of header names to strings")
            if key != "headers" and not isinstance(value, str):
                raise source.problem(f"{key} must be a string")
            values[key] = (value.strip() if isinstance(value, str) else value, source)
        # A field that is missing is reported at the table.
        values.setdefault("", (None, file.source(line)))
        endpoints[name] = values
    return endpoints


def _endpoint(name: str, fields: Fields) -> Endpoint:
    builtin = BUILTIN_ENDPOINTS.get(name)
    missing = fields.get("", (None, Source(f"{ENDPOINT_PREFIX}{name.upper()}_API")))[1]

    def value(field: str) -> tuple[Any, Source]:
        found = fields.get(field)
        if found is not None:
            return found
        if missing.place:  # the endpoint is in the file: the table is where to add the field
            return None, missing
        return None, Source(f"{ENDPOINT_PREFIX}{name.upper()}_{field.upper()}")

    api, source = value("api")
    if builtin is not None:
        if api is not None and api != builtin.api:
            raise source.problem(f"the built-in endpoint {name!r} speaks {builtin.api}; name another endpoint for another api")
        api = builtin.api
    elif not api:
        raise source.problem(f"endpoint {name!r} needs an api: one of {', '.join(ADAPTERS)}")
    elif api not in ADAPTERS:
        raise source.problem(f"unknown api {api[:64]!r} for endpoint {name!r} (known: {', '.join(ADAPTERS)})")

    base_url, source = value("base_url")
    if base_url:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise source.problem(f"the base URL of endpoint {name!r} must be an http:// or https:// URL")
    elif builtin is None:
        raise source.problem(f"endpoint {name!r} needs a base URL (only the built-in {' and '.join(BUILTIN_ENDPOINTS)} endpoints have a default)")

    headers, source = value("headers")
    pairs: list[tuple[str, str]] = []
    for header, text in (headers or {}).items():
        if not _HEADER_NAME.fullmatch(header) or not isinstance(text, str) or "\r" in text or "\n" in text:
            raise source.problem(f"headers of endpoint {name!r}: each must be a header name with a one-line string value")
        pairs.append((header, text))

    field, source = value("max_tokens_field")
    if field is not None and not _FIELD_NAME.fullmatch(field):
        raise source.problem("the max_tokens field must be a name such as max_tokens or max_completion_tokens")
    if field is None and builtin is not None and not base_url:
        field = builtin.own_max_tokens_field

    api_key = value("api_key")[0]
    return Endpoint(name, api, base_url or None, api_key or None, tuple(pairs), field, builtin=builtin is not None)


def _file_models(file: ConfigFile, entries: Any) -> list[tuple[str, Entry]]:
    """The `[[models]]` entries by model name, in order."""
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise file.source(file.table_line(r"\[*\s*models\b.*")).problem("models must be [[models]] tables, one per model")
    found: list[tuple[str, Entry]] = []
    for number, entry in enumerate(entries):
        line = file.table_line(r"\[\[\s*models\s*\]\]", number)
        for key in entry:
            if key not in MODEL_KEYS:
                raise file.key_source(line, key).problem(f"unknown key {key[:64]!r} in [[models]] (known: {', '.join(MODEL_KEYS)})")
        name = entry.get("name")
        if not isinstance(name, str):
            raise file.source(line).problem("each [[models]] entry needs a name = \"endpoint/model\"")
        try:
            spec = parse_models([name])[0]
        except ValueError as exc:
            raise file.key_source(line, "name").problem(str(exc)) from None
        if any(spec == other for other, _ in found):
            raise file.key_source(line, "name").problem(f"model {spec[:100]!r} is listed twice")
        options: dict[str, Any] = {}
        for key, check in _OPTION_CHECKS.items():
            if key in entry:
                problem = check(entry[key])
                if problem:
                    raise file.key_source(line, key).problem(f"{key} of {spec[:100]!r} {problem}")
                options[key] = entry[key]
        found.append((str(spec), Entry(
            options, file.key_source(line, "name"), file.key_source(line, "alias"), file.key_source(line, "max_tokens_limit")
        )))
    return found


def _options(spec: str, entry: Entry | None, defaults: ModelOptions) -> ModelOptions:
    if entry is None:
        return defaults
    options = entry.options
    if options.get("max_tokens_limit", 0) > defaults.max_tokens_limit:
        raise entry.limit.problem(
            f"max_tokens_limit of {spec[:100]!r} must not exceed AI_MAX_TOKENS_LIMIT ({defaults.max_tokens_limit})"
        )
    return ModelOptions(
        first_token_timeout=options.get("first_token_timeout", defaults.first_token_timeout),
        max_tokens_limit=options.get("max_tokens_limit", defaults.max_tokens_limit),
        temperature=options.get("temperature", True),
        history_token_budget=options.get("history_token_budget"),
        alias=options.get("alias"),
    )


def _positive_number(value: Any) -> str | None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and value > 0
    return None if ok else "must be a number greater than 0"


def _positive_integer(value: Any) -> str | None:
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= 1
    return None if ok else "must be an integer of at least 1"


_OPTION_CHECKS = {
    "first_token_timeout": _positive_number,
    "max_tokens_limit": _positive_integer,
    "temperature": lambda value: None if isinstance(value, bool) else "must be true or false",
    "history_token_budget": _positive_integer,
    "alias": lambda value: None if isinstance(value, str) and _ALIAS.fullmatch(value) else (
        "must be 1-128 letters, digits, '.', '_', ':', '/' or '-'"
    ),
}


def _check_aliases(infos: list[ModelInfo], entries: Mapping[str, Entry]) -> None:
    for info in infos:
        alias = info.options.alias
        if alias is None:
            continue
        source = entries[info.name].alias
        for other in infos:
            if other is not info and alias in (other.name, other.model, other.options.alias):
                raise source.problem(f"alias {alias!r} of {info.name!r} is also the name of {other.name!r}")
