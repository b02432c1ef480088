"""Settings from flags and TRITIUM_* variables: one mechanism for the adapter and `tritium serve`.

A frozen config dataclass declares its settings (names, types, defaults, checks in
`__post_init__`); each field is also the environment variable `TRITIUM_<FIELD>`, or the
name in its metadata (`field(metadata={"env": "TRITIUM_X"})`; `{"env": None}` = not a
setting). pydantic-settings reads and converts them:

    config = load(AdapterConfig, flags={"max_n": "4"})   # defaults < TRITIUM_* < flags

Text forms, the same for a variable and a flag: a tuple field takes commas
(`TRITIUM_API_KEYS=a,b`) and a repeated flag, or words split as a shell would for a
field with `metadata={"shell_words": True}` (arguments that may hold commas); an
optional field reads "" or "none" as None. `with_env(help, AdapterConfig, "max_n")` puts the variable's name into a flag's
--help, so the two cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import shlex
import types
import typing
from collections.abc import Mapping
from typing import Annotated, Any, TypeVar

from pydantic import BeforeValidator, Field, ValidationError, create_model
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

ENV_PREFIX = "TRITIUM_"

Config = TypeVar("Config")


class ConfigError(ValueError):
    """A bad setting; the message names it (field and variable) and what is allowed."""


def env_var(config_cls: type, name: str) -> str | None:
    """The environment variable of field `name` of `config_cls` (None: not a setting)."""
    config_field = {f.name: f for f in dataclasses.fields(config_cls)}[name]
    return config_field.metadata.get("env", ENV_PREFIX + name.upper())


def env_vars(config_cls: type) -> dict[str, str]:
    """Field name -> environment variable, for every setting of `config_cls`."""
    names = (f.name for f in dataclasses.fields(config_cls) if f.init)
    return {name: env for name in names if (env := env_var(config_cls, name)) is not None}


def with_env(help_text: str, config_cls: type, name: str) -> str:
    """`help_text` of a flag, followed by the variable that sets the same field."""
    return f"{help_text} [env: {env_var(config_cls, name)}]"


def load(
    config_cls: type[Config],
    flags: Mapping[str, object] | None = None,
    environ: Mapping[str, str] | None = None,
    **fixed: object,
) -> Config:
    """`config_cls` from its defaults, then TRITIUM_* variables of `environ` (default: the
    process's), then `flags` (field -> value; None = not given), then `fixed` (values the
    caller decided, not settings). ConfigError names a value that cannot be converted;
    `config_cls` itself checks the rest."""
    model = _settings_model(config_cls)
    names = env_vars(config_cls)
    given = {names[name]: value for name, value in (flags or {}).items() if value is not None}
    try:
        from_env = _MappingEnvSource(model, os.environ if environ is None else environ)()
        settings = model(**{**from_env, **given})
    except ValidationError as error:
        raise ConfigError(_describe(error, names)) from None
    values = settings.model_dump(exclude_unset=True)
    try:
        return config_cls(**values, **fixed)
    except ConfigError:
        raise
    except (TypeError, ValueError) as error:
        raise ConfigError(str(error)) from None


class _Settings(BaseSettings):
    """Base of the generated models: only the values `load` passes in (flags over the
    variables its `_MappingEnvSource` found); no .env files, no secrets directory."""

    model_config = SettingsConfigDict(case_sensitive=True, extra="forbid")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


class _MappingEnvSource(EnvSettingsSource):
    """pydantic-settings' variable reader over a given mapping (tests pass their own)."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._given_environ = environ
        super().__init__(settings_cls, case_sensitive=True)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return dict(self._given_environ)


@functools.cache
def _settings_model(config_cls: type) -> type[_Settings]:
    """A pydantic-settings model with one optional field per setting of `config_cls`,
    aliased to its variable: flags are passed under the same names, so the two agree."""
    hints = typing.get_type_hints(config_cls)
    shell_words = {f.name for f in dataclasses.fields(config_cls) if f.metadata.get("shell_words")}
    definitions: dict[str, Any] = {}
    for name, env in env_vars(config_cls).items():
        annotation = hints[name]
        parse = BeforeValidator(functools.partial(_from_text, annotation, name in shell_words))
        # NoDecode: a tuple comes as commas, not as JSON (see _from_text).
        definitions[name] = (
            Annotated[annotation | None, NoDecode, parse],
            Field(default=None, validation_alias=env),
        )
    return create_model(f"{config_cls.__name__}Settings", __base__=_Settings, **definitions)


def _from_text(annotation: Any, shell_words: bool, value: object) -> object:
    """The text of a variable or the strings of a flag -> what the field's type accepts."""
    if value is None:  # not given (pydantic-settings validates the defaults too)
        return None
    if isinstance(value, (list, tuple)) and not _is_tuple(annotation):
        value = value[-1]  # a repeated single-valued flag: the last one wins
    if shell_words:  # a variable holds words; a repeated flag, one word each
        return tuple(shlex.split(value)) if isinstance(value, str) else tuple(value)  # type: ignore[arg-type]
    if _is_tuple(annotation):
        items = [value] if isinstance(value, str) else list(value)  # type: ignore[call-overload]
        parts = (part.strip() for item in items for part in str(item).split(","))
        return tuple(part for part in parts if part)
    if isinstance(value, str):
        text = value.strip()
        if _is_optional(annotation) and text.lower() in ("", "none"):
            return None
        return text
    return value


def _is_tuple(annotation: Any) -> bool:
    return any(typing.get_origin(arm) is tuple for arm in _arms(annotation))


def _is_optional(annotation: Any) -> bool:
    return type(None) in _arms(annotation)


def _arms(annotation: Any) -> tuple[Any, ...]:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return typing.get_args(annotation)
    return (annotation,)


def _describe(error: ValidationError, names: Mapping[str, str]) -> str:
    fields_by_env = {env: name for name, env in names.items()}
    problems = []
    for item in error.errors():
        env = str(item["loc"][0]) if item["loc"] else ""
        name = fields_by_env.get(env, env)
        problems.append(f"{name} (flag or {env}): {item['msg']}, got {item['input']!r}")
    return "; ".join(problems)
