"""What the proxy records about each HTTP request when it ends: Ray Serve's HTTP
metrics (count, errors, latency, ongoing) and the access log line; and the same for
each gRPC call (:class:`GrpcObserver`, Ray's ``serve_*_grpc_*`` metrics).

:meth:`RequestObserver.begin` is called as a request is routed; it stamps the
request and sets its ``on_end`` hook, which records once the response has ended
(or the client left: status 499). Nothing here does I/O.
"""

from __future__ import annotations

import time

from schooner.logs import AccessLog
from schooner.proxy.http_server import Request
from schooner.telemetry import catalog, recorder, tracing

__all__ = ["GrpcObserver", "RequestObserver"]


class RequestObserver:
    """The proxy's per-request metrics and access log."""

    def __init__(self, node_id: str, node_ip: str, access_log: AccessLog | None = None) -> None:
        self.access_log = access_log or AccessLog("proxy")
        self.access_log.use_running_loop()
        self.metrics = recorder.ENABLED
        self.tracing = tracing.enabled()
        #: Off entirely (no hook on requests) without metrics, access lines and tracing.
        self.enabled = self.metrics or self.access_log.enabled or self.tracing
        self._latency = recorder.histogram(catalog.HTTP_LATENCY, count_as=catalog.HTTP_REQUESTS)
        self._errors = recorder.counter(catalog.HTTP_ERRORS)
        self._deployment_errors = recorder.counter(catalog.HTTP_DEPLOYMENT_ERRORS)
        self._began = 0
        self._ended = 0
        self._node = (node_id, node_ip)
        self._codes: dict[int, str] = {}
        recorder.add_collector(self._ongoing)

    def _ongoing(self) -> list[recorder.Series]:
        return [(catalog.HTTP_ONGOING, self._node, float(self._began - self._ended))]

    def begin(
        self, request: Request, request_id: str, route: str, application: str, deployment: str
    ) -> str:
        """``request`` is being answered (by ``deployment`` of ``application``, or by the
        proxy itself when ``application`` is empty). Returns the W3C ``traceparent`` to
        hand on to the replica ("" without tracing)."""
        if not self.enabled:
            return ""
        request.received_at = time.perf_counter()
        span = None
        traceparent = ""
        if self.tracing:
            header = request.header(b"traceparent")
            span = tracing.open_span(
                "proxy_http_request",
                header.decode("latin-1") if header else "",
                {
                    "http.method": request.method,
                    "http.route": route,
                    "schooner.application": application,
                    "schooner.request_id": request_id,
                },
            )
            traceparent = tracing.traceparent_of(span)
        request.tags = (route, application, deployment, request_id, span)
        request.on_end = self._end
        self._began += 1
        return traceparent

    def _end(self, request: Request) -> None:
        self._ended += 1
        latency_ms = (time.perf_counter() - request.received_at) * 1000.0
        route, application, deployment, request_id, span = request.tags
        status = request.status
        code = self._codes.get(status)
        if code is None:
            code = self._codes[status] = str(status)
        method = request.method
        if span is not None:
            tracing.close_span(span, status_code=status)
        if self.metrics:
            self._latency.observe((method, route, application, code), latency_ms)
            if status >= 400:
                self._errors.inc((route, code, method, application))
                self._deployment_errors.inc((deployment, code, method, route, application))
        access = self.access_log
        if access.enabled:
            client = request.client
            access.record(
                method=method,
                route=route,
                status=status,
                latency_ms=latency_ms,
                request_id=request_id,
                application=application,
                deployment=deployment,
                client=f"{client[0]}:{client[1]}" if client else "",
            )


class GrpcObserver:
    """The proxy's per-call gRPC metrics and access log (``status``: the code's name)."""

    def __init__(self, node_id: str, node_ip: str, access_log: AccessLog | None = None) -> None:
        self.access_log = access_log or AccessLog("proxy")
        self.metrics = recorder.ENABLED
        self._latency = recorder.histogram(catalog.GRPC_LATENCY, count_as=catalog.GRPC_REQUESTS)
        self._errors = recorder.counter(catalog.GRPC_ERRORS)
        self._deployment_errors = recorder.counter(catalog.GRPC_DEPLOYMENT_ERRORS)
        self._began = 0
        self._ended = 0
        self._node = (node_id, node_ip)
        recorder.add_collector(self._ongoing)

    def _ongoing(self) -> list[recorder.Series]:
        return [(catalog.GRPC_ONGOING, self._node, float(self._began - self._ended))]

    def begin(self) -> float:
        """A call arrived; returns its start time (for :meth:`end`)."""
        self._began += 1
        return time.perf_counter()

    def end(
        self,
        started: float,
        *,
        method: str,
        route: str,
        application: str,
        deployment: str,
        status: str,
        request_id: str,
        client: str,
    ) -> None:
        """The call ended with ``status`` (a ``grpc.StatusCode`` name)."""
        self._ended += 1
        latency_ms = (time.perf_counter() - started) * 1000.0
        if self.metrics:
            self._latency.observe((method, route, application, status), latency_ms)
            if status != "OK":
                self._errors.inc((route, status, method, application))
                self._deployment_errors.inc((deployment, status, method, route, application))
        access = self.access_log
        if access.enabled:
            access.record(
                method=method,
                route=route,
                status=status,
                latency_ms=latency_ms,
                request_id=request_id,
                application=application,
                deployment=deployment,
                client=client,
            )
