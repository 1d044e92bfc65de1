"""Distributed tracing with OpenTelemetry (``pip install 'schooner[tracing]'``).

Off unless the instance was started with ``tracing_config=TracingConfig(enabled=True)``
(Ray's fields: ``enabled``, ``exporter_import_path``, ``sampling_ratio``); the config
reaches every process of the instance in the environment (:data:`TRACING_ENV`).

Spans: the proxy opens ``proxy_http_request`` (a child of the request's W3C
``traceparent`` header when there is one), the replica serving it
``replica_handle_request``, and each handle call made while serving opens the
next replica's span under the current one, so one trace follows a request
through every deployment it reaches. The trace context travels in the request's
call metadata as a ``traceparent`` string; user code's own spans nest under the
replica's span. Sampling is parent-based with the configured ratio for new traces.

Exporters: ``exporter_import_path`` names a function (``module:function``) that
returns a list of OpenTelemetry span processors; by default each process writes
its spans as JSON lines to ``<logs>/tracing/<component>_<id>.jsonl``.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
from pathlib import Path
from typing import Any

__all__ = [
    "TRACING_ENV",
    "activate",
    "close_span",
    "current_traceparent",
    "deactivate",
    "enabled",
    "open_span",
    "setup",
    "traceparent_of",
]

logger = logging.getLogger("schooner.tracing")

TRACING_ENV = "SCHOONER_TRACING_CONFIG"

_tracer: Any = None
_provider: Any = None
_propagator: Any = None


def enabled() -> bool:
    """Whether this process exports spans."""
    return _tracer is not None


def config_from_env() -> dict[str, Any] | None:
    """The instance's tracing config, if tracing is on."""
    raw = os.environ.get(TRACING_ENV)
    if not raw:
        return None
    try:
        config = json.loads(raw)
    except ValueError:
        logger.error("%s is not valid JSON: tracing is off", TRACING_ENV)
        return None
    return config if isinstance(config, dict) and config.get("enabled") else None


def setup(component: str, worker_id: str, logs_dir: Path) -> bool:
    """Start exporting this process's spans if the instance has tracing on."""
    global _tracer, _propagator, _provider
    config = config_from_env()
    if config is None:
        return False
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
        from opentelemetry.trace.propagation.tracecontext import (
            TraceContextTextMapPropagator,
        )
    except ImportError:
        logger.error(
            "tracing_config.enabled is set but OpenTelemetry is not installed in this "
            "environment: pip install 'schooner[tracing]'. Tracing is off."
        )
        return False
    ratio = float(config.get("sampling_ratio", 0.01))
    resource = Resource.create(
        {
            "service.name": "schooner",
            "schooner.component": component,
            "schooner.worker_id": worker_id,
        }
    )
    provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(ratio)), resource=resource)
    path = str(config.get("exporter_import_path") or "")
    try:
        processors = _processors(path, logs_dir, component, worker_id)
    except Exception:
        logger.exception("tracing exporter %r could not be set up: tracing is off", path)
        return False
    for processor in processors:
        provider.add_span_processor(processor)
    from opentelemetry import trace

    trace.set_tracer_provider(provider)  # user code's tracers export through it too
    _provider = provider
    _tracer = provider.get_tracer("schooner")
    _propagator = TraceContextTextMapPropagator()
    return True


def _processors(path: str, logs_dir: Path, component: str, worker_id: str) -> list[Any]:
    if path:
        module_name, _, name = path.partition(":")
        if not name:
            module_name, _, name = path.rpartition(".")
        factory = getattr(importlib.import_module(module_name), name)
        return list(factory())
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    directory = logs_dir / "tracing"
    directory.mkdir(parents=True, exist_ok=True)
    safe_id = worker_id.replace("/", "_").replace("#", "_")
    out = open(directory / f"{component}_{safe_id}.jsonl", "a", encoding="utf-8")  # noqa: SIM115
    exporter = ConsoleSpanExporter(out=out, formatter=lambda span: span.to_json(indent=None) + "\n")
    return [BatchSpanProcessor(exporter, schedule_delay_millis=500)]


def open_span(name: str, traceparent: str, attributes: dict[str, Any]) -> Any:
    """Open a server span, child of ``traceparent`` (a W3C header value; "" for a new
    trace). It is not made current: see :func:`activate`."""
    from opentelemetry import trace

    parent = _propagator.extract({"traceparent": traceparent}) if traceparent else None
    return _tracer.start_span(
        name, context=parent, kind=trace.SpanKind.SERVER, attributes=attributes
    )


def traceparent_of(span: Any) -> str:
    """``span``'s W3C ``traceparent``, to pass to the next process."""
    from opentelemetry import trace

    carrier: dict[str, str] = {}
    _propagator.inject(carrier, context=trace.set_span_in_context(span))
    return carrier.get("traceparent", "")


def activate(span: Any) -> Any:
    """Make ``span`` current (user code's spans and handle calls nest under it); returns
    the token :func:`deactivate` takes, in the same task or thread."""
    from opentelemetry import context, trace

    return context.attach(trace.set_span_in_context(span))


def deactivate(token: Any) -> None:
    from opentelemetry import context

    context.detach(token)


def close_span(span: Any, error: str | None = None, status_code: int = 0) -> None:
    """End ``span`` (``error``: an exception's type name; ``status_code``: HTTP status)."""
    from opentelemetry import trace

    if status_code:
        span.set_attribute("http.status_code", status_code)
    if error or status_code >= 500:
        span.set_status(trace.Status(trace.StatusCode.ERROR, error or str(status_code)))
    span.end()


def current_traceparent() -> str:
    """The current span's W3C ``traceparent`` ("" when tracing is off or no span is open)."""
    if _propagator is None:
        return ""
    carrier: dict[str, str] = {}
    _propagator.inject(carrier)
    return carrier.get("traceparent", "")


def shutdown() -> None:
    """Flush spans not yet exported (at process exit)."""
    if _provider is not None:
        _provider.shutdown()
