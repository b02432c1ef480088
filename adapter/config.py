"""Adapter configuration: one frozen dataclass, built once at the edge.

Every field can come from a CLI flag (`adapter.cli`) or a `TRITIUM_*` environment
variable (`AdapterConfig.from_env`), read by `adapter.settings` (the mechanism
`tritium serve` shares); the two spellings mirror each other, e.g. `--max-body-bytes`
and `TRITIUM_MAX_BODY_BYTES`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from adapter.settings import ENV_PREFIX, ConfigError, load

LOG_LEVELS = ("critical", "error", "warning", "info", "debug")
__all__ = ["ENV_PREFIX", "LOG_LEVELS", "AdapterConfig", "ConfigError"]


@dataclass(frozen=True)
class AdapterConfig:
    # Triton gRPC endpoints (host:port). Several = least-loaded routing (one is enough today).
    triton_urls: tuple[str, ...] = ("127.0.0.1:8001",)
    # Accepted Bearer keys; empty = no authentication. Never logged.
    api_keys: tuple[str, ...] = field(default=(), repr=False)
    # Origins allowed by CORS; empty = no CORS headers at all.
    cors_origins: tuple[str, ...] = ()
    # Largest request body accepted (413 above it), counted on the wire.
    max_body_bytes: int = 4 * 1024 * 1024
    # Triton generation requests in flight at once (a completions request takes one per
    # prompt); past it a request gets 429 + Retry-After.
    max_concurrent_requests: int = 256
    # Most choices (`n`) one request may ask for.
    max_n: int = 16
    # Upper bound on max_tokens; None = only the model's context length bounds it.
    max_tokens: int | None = None
    # Deadline of one generation request at Triton; None = no deadline.
    request_timeout_s: float | None = 600.0
    # Seconds a client is told to wait (Retry-After) when over the concurrency limit.
    retry_after_s: int = 1
    log_level: str = "info"
    # uvicorn bind address for `python -m adapter` / `tritium serve`.
    host: str = "0.0.0.0"
    port: int = 8000

    def __post_init__(self) -> None:
        # Accept lists from callers, store tuples so the config stays hashable and frozen.
        for name in ("triton_urls", "api_keys", "cors_origins"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        object.__setattr__(self, "log_level", self.log_level.lower())
        if not self.triton_urls:
            raise ConfigError("triton_urls: give at least one Triton gRPC endpoint (host:port)")
        for url in self.triton_urls:
            # dns:///NAME:PORT = every address of NAME (a headless Service); see adapter.discovery
            address = url.removeprefix("dns:///")
            if "://" in address or ":" not in address:
                raise ConfigError(
                    f"triton_urls: expected host:port or dns:///name:port (gRPC), got {url!r}"
                )
        if any(not key for key in self.api_keys):
            raise ConfigError("api_keys: keys must not be empty strings")
        _check_positive("max_body_bytes", self.max_body_bytes)
        _check_positive("max_concurrent_requests", self.max_concurrent_requests)
        _check_positive("max_n", self.max_n)
        _check_positive("retry_after_s", self.retry_after_s)
        if self.max_tokens is not None:
            _check_positive("max_tokens", self.max_tokens)
        if self.request_timeout_s is not None and self.request_timeout_s <= 0:
            raise ConfigError(
                f"request_timeout_s: must be > 0 (or unset for none), got {self.request_timeout_s}"
            )
        if self.log_level not in LOG_LEVELS:
            raise ConfigError(f"log_level: one of {', '.join(LOG_LEVELS)}, got {self.log_level!r}")
        if not (0 < self.port < 65536):
            raise ConfigError(f"port: must be in 1..65535, got {self.port}")

    @property
    def auth_enabled(self) -> bool:
        return bool(self.api_keys)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> AdapterConfig:
        """Build from TRITIUM_* variables; unset variables keep the defaults.

        Lists (TRITIUM_TRITON_URLS, TRITIUM_API_KEYS, TRITIUM_CORS_ORIGINS) are
        comma-separated. An empty TRITIUM_MAX_TOKENS / TRITIUM_REQUEST_TIMEOUT_S = None.
        """
        return load(cls, environ=environ)


def _check_positive(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name}: must be an integer >= 1, got {value!r}")
