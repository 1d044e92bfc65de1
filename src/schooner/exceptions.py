"""Schooner's exception tree.

Every error a user can see derives from :class:`RayServeException`, so one
``except`` catches them all. Names match ``ray.serve.exceptions`` so that Ray
Serve programs catching them keep working. All are picklable: they travel
between processes.

The HTTP status each one maps to is decided in one place,
:func:`http_status_for`, and the gRPC status in :func:`grpc_status_for`.
"""

from __future__ import annotations

__all__ = [
    "BackPressureError",
    "DeployFailedError",
    "DeploymentOptionError",
    "DeploymentUnavailableError",
    "RayServeException",
    "RemoteUserError",
    "ReplicaUnavailableError",
    "RequestCancelledError",
    "RuntimeEnvSetupError",
    "ServeConfigError",
    "grpc_status_for",
    "http_status_for",
]


class RayServeException(Exception):
    """Base class of every error Schooner raises on purpose."""


class DeploymentOptionError(RayServeException, ValueError):
    """An option given to ``@serve.deployment``, ``.options()`` or a config
    file is invalid. The message names the option, the bad value and what is
    accepted. Raised where the option is given, before anything is deployed.
    """


class ServeConfigError(RayServeException, ValueError):
    """A config file or config document is invalid (which field, what is wrong)."""


class RuntimeEnvSetupError(RayServeException):
    """A ``runtime_env`` is invalid or could not be set up.

    Raised by validation (which field, what is wrong, what to do) and by
    setup: a missing directory, a download that failed, a file that is not a
    zip, or ``pip install`` failing (the message ends with pip's output). Ray
    raises an exception of the same name. Not to be confused with
    :class:`ServeConfigError`, which is about the rest of a config document.
    """


class BackPressureError(RayServeException):
    """The caller's queue for a deployment is full (``max_queued_requests``).

    Raised at once instead of queueing; over HTTP it becomes ``status_code``
    (503, or 429 with ``backpressure_config``), with a ``Retry-After`` header
    when ``retry_after_s`` is set. Not to be confused with
    :class:`DeploymentUnavailableError`, which means there is no replica to
    send to at all.
    """

    def __init__(
        self,
        *,
        num_queued_requests: int = 0,
        max_queued_requests: int = 0,
        deployment: str = "",
        status_code: int = 503,
        retry_after_s: float | None = None,
    ) -> None:
        self.num_queued_requests = num_queued_requests
        self.max_queued_requests = max_queued_requests
        self.deployment = deployment
        self.status_code = status_code
        self.retry_after_s = retry_after_s
        super().__init__(
            f"Request dropped due to backpressure (num_queued_requests={num_queued_requests}, "
            f"max_queued_requests={max_queued_requests})."
            + (f" Deployment: {deployment}." if deployment else "")
        )

    def __reduce__(self) -> tuple[object, ...]:
        return (
            _rebuild_backpressure,
            (
                self.num_queued_requests,
                self.max_queued_requests,
                self.deployment,
                self.status_code,
                self.retry_after_s,
            ),
        )


def _rebuild_backpressure(
    queued: int,
    max_queued: int,
    deployment: str,
    status_code: int = 503,
    retry_after_s: float | None = None,
) -> BackPressureError:
    return BackPressureError(
        num_queued_requests=queued,
        max_queued_requests=max_queued,
        deployment=deployment,
        status_code=status_code,
        retry_after_s=retry_after_s,
    )


class RequestCancelledError(RayServeException):
    """The request was cancelled (by the caller or because the client went away)."""


class DeploymentUnavailableError(RayServeException):
    """The target deployment does not exist or has been deleted."""


class ReplicaUnavailableError(RayServeException):
    """The replica serving the request died or could not be reached."""


class RemoteUserError(RayServeException):
    """User code raised an exception whose class could not be rebuilt in the caller.

    When the original exception class can be unpickled, callers get an
    instance of that class instead (with the remote traceback chained as its
    cause); this class is the fallback. ``type_name`` and ``remote_traceback``
    carry what was raised and where.
    """

    def __init__(self, type_name: str, message: str, remote_traceback: str = "") -> None:
        self.type_name = type_name
        self.message = message
        self.remote_traceback = remote_traceback
        super().__init__(f"{type_name}: {message}")

    def __reduce__(self) -> tuple[object, ...]:
        return (RemoteUserError, (self.type_name, self.message, self.remote_traceback))


def http_status_for(exc: BaseException) -> int:
    """The HTTP status code a proxy answers with when ``exc`` ends a request."""
    if isinstance(exc, BackPressureError):
        return exc.status_code
    if isinstance(exc, DeploymentUnavailableError | ReplicaUnavailableError):
        return 503
    if isinstance(exc, RequestCancelledError):
        return 499
    if isinstance(exc, TimeoutError):
        return 408
    return 500


def grpc_status_for(exc: BaseException) -> str:
    """The name of the ``grpc.StatusCode`` a gRPC proxy ends a call with when ``exc`` ends
    it (as Ray Serve's gRPC proxy: user errors are INTERNAL)."""
    if isinstance(exc, BackPressureError):
        return "RESOURCE_EXHAUSTED"
    if isinstance(exc, DeploymentUnavailableError | ReplicaUnavailableError):
        return "UNAVAILABLE"
    if isinstance(exc, RequestCancelledError):
        return "CANCELLED"
    if isinstance(exc, TimeoutError):
        return "DEADLINE_EXCEEDED"
    return "INTERNAL"


class DeployFailedError(RayServeException, RuntimeError):
    """``serve.run`` could not bring the application to RUNNING.

    The message carries the application's status message: for a constructor
    that raised, the exception type, message and traceback.
    """
