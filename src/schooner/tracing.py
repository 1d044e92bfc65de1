"""Tracing: the API Ray Serve programs use, for an instance that exports no traces yet.

``serve.start(tracing_config=TracingConfig(enabled=True))`` is accepted with a
warning (see :mod:`schooner.start_options`); :func:`get_trace_context` returns
``None``, which is what Ray returns when tracing is off, so code that passes it
to ``tracer.start_as_current_span(context=...)`` keeps working.
"""

from __future__ import annotations

__all__ = ["get_trace_context"]


def get_trace_context() -> dict[str, str] | None:
    """The current request's OpenTelemetry context; ``None`` (tracing is not exported yet)."""
    return None
