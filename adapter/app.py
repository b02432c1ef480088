"""The app factory: `create_app(config, triton_factory=...)`.

The lifespan owns the Triton client(s): built at startup by `triton_factory`
(default: `adapter.backends.Backends.from_config`, one gRPC client per URL), closed
at shutdown. Tests pass a factory that returns a fake backend.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware

from adapter.backends import Backends, EndpointStats
from adapter.config import AdapterConfig
from adapter.contract import TritonBackend
from adapter.dependencies import (
    AdapterState,
    ConcurrencyLimiter,
    ModelCatalog,
    require_api_key,
)
from adapter.errors import install_error_handlers
from adapter.metrics import AdapterMetrics
from adapter.middleware import BodyLimitMiddleware, RequestContextMiddleware
from adapter.playground import mount_playground
from adapter.routes import chat, completions, health, models, tokenize
from adapter.routes import metrics as metrics_route

TritonFactory = Callable[[AdapterConfig], TritonBackend]


def default_triton_factory(config: AdapterConfig) -> TritonBackend:
    return Backends.from_config(config)  # imports gRPC only now: fakes never touch it


def _metrics(backend: TritonBackend, limiter: ConcurrencyLimiter) -> AdapterMetrics:
    if not isinstance(backend, Backends):  # a test fake: no endpoints to report
        return AdapterMetrics(in_flight=lambda: limiter.in_flight)

    def per_endpoint(value: Callable[[EndpointStats], float]) -> Callable[[], dict]:
        return lambda: {(stats.url,): value(stats) for stats in backend.endpoint_stats()}

    return AdapterMetrics(
        in_flight=lambda: limiter.in_flight,
        endpoint_in_flight=per_endpoint(lambda stats: stats.in_flight),
        endpoint_requests=per_endpoint(lambda stats: stats.requests),
        endpoint_healthy=per_endpoint(lambda stats: float(stats.healthy)),
    )


def create_app(
    config: AdapterConfig | None = None, triton_factory: TritonFactory = default_triton_factory
) -> FastAPI:
    config = config or AdapterConfig()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        backend = triton_factory(config)
        limiter = ConcurrencyLimiter(config.max_concurrent_requests, config.retry_after_s)
        app.state.adapter = AdapterState(
            config=config,
            backend=backend,
            catalog=ModelCatalog(backend),
            limiter=limiter,
            metrics=_metrics(backend, limiter),
        )
        try:
            yield
        finally:
            app.state.adapter = None
            await backend.close()

    app = FastAPI(
        title="Tritium OpenAI adapter",
        version="0.1.0",
        lifespan=lifespan,
        docs_url=None,  # no Swagger UI: it would need assets from a CDN
        redoc_url=None,
    )
    app.state.config = config
    app.state.adapter = None
    install_error_handlers(app)

    authenticated = [Depends(require_api_key)]
    app.include_router(health.router)  # probes never need a key
    app.include_router(metrics_route.router)  # nor does Prometheus (no data, no keys in it)
    app.include_router(chat.router, dependencies=authenticated)
    app.include_router(completions.router, dependencies=authenticated)
    app.include_router(models.router, dependencies=authenticated)
    app.include_router(tokenize.router, dependencies=authenticated)
    mount_playground(app)  # the web page at /: static, no key (it asks for one on a 401)

    # Added innermost first: CORS ends up outermost, so even errors carry its headers.
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=config.max_body_bytes)
    app.add_middleware(
        RequestContextMiddleware,
        metrics=lambda: app.state.adapter.metrics if app.state.adapter else None,
    )
    if config.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(config.cors_origins),
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type", "X-Request-ID"],
            expose_headers=["X-Request-ID", "Retry-After"],
        )
    return app


def create_app_from_env() -> FastAPI:
    """For `uvicorn --factory adapter.app:create_app_from_env` (settings from TRITIUM_*)."""
    return create_app(AdapterConfig.from_env())
