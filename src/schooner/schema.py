"""Status values and the config-document schema, as in Ray's ``ray.serve.schema``.

Status enums and the objects ``serve.status()`` returns come first. Then the
schema of config files and of the REST ``PUT /api/serve/applications/`` body:
:class:`ServeDeploySchema` with its :class:`ServeApplicationSchema` list.
:class:`DeploymentSchema` is derived from :class:`schooner.config.DeploymentConfig`
(every option optional, same types and checks), so an option is declared once.
:func:`parse_config_document` also accepts the older single-application form.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    field_serializer,
    field_validator,
    model_validator,
)

from schooner.config import (
    DEFAULT_REQUEST_ROUTER,
    RAY_DEFAULT_REQUEST_ROUTER,
    AutoscalingConfig,
    AutoscalingPolicy,
    ControllerOptions,
    DeploymentConfig,
    HTTPOptions,
    LoggingConfig,
    ProxyLocation,
    RequestRouterConfig,
    TracingConfig,
    _check_name,
    _humanize,
    _short_repr,
    gRPCOptions,
    option_combination_problems,
    option_error_detail,
)
from schooner.exceptions import ServeConfigError

__all__ = [
    "APIType",
    "ApplicationStatus",
    "ApplicationStatusOverview",
    "AutoscalingConfig",
    "DeploymentSchema",
    "DeploymentStatus",
    "DeploymentStatusOverview",
    "DeploymentStatusTrigger",
    "HTTPOptionsSchema",
    "LoggingConfig",
    "ProxyStatus",
    "ReplicaRank",
    "ReplicaState",
    "ServeApplicationSchema",
    "ServeDeploySchema",
    "ServeStatus",
    "TracingConfig",
    "TrafficSchema",
    "gRPCOptionsSchema",
    "parse_config_document",
]

# ---------------------------------------------------------------------------
# Status values (exactly Ray's strings)
# ---------------------------------------------------------------------------


class ApplicationStatus(StrEnum):
    NOT_STARTED = "NOT_STARTED"
    DEPLOYING = "DEPLOYING"
    DEPLOY_FAILED = "DEPLOY_FAILED"
    RUNNING = "RUNNING"
    UNHEALTHY = "UNHEALTHY"
    DELETING = "DELETING"


class DeploymentStatus(StrEnum):
    UPDATING = "UPDATING"
    HEALTHY = "HEALTHY"
    UNHEALTHY = "UNHEALTHY"
    DEPLOY_FAILED = "DEPLOY_FAILED"
    UPSCALING = "UPSCALING"
    DOWNSCALING = "DOWNSCALING"


class DeploymentStatusTrigger(StrEnum):
    """Why a deployment has its current status."""

    UNSPECIFIED = "UNSPECIFIED"
    CONFIG_UPDATE_STARTED = "CONFIG_UPDATE_STARTED"
    CONFIG_UPDATE_COMPLETED = "CONFIG_UPDATE_COMPLETED"
    UPSCALE_COMPLETED = "UPSCALE_COMPLETED"
    DOWNSCALE_COMPLETED = "DOWNSCALE_COMPLETED"
    AUTOSCALING = "AUTOSCALING"
    REPLICA_STARTUP_FAILED = "REPLICA_STARTUP_FAILED"
    DEPLOYMENT_ACTOR_FAILED = "DEPLOYMENT_ACTOR_FAILED"
    HEALTH_CHECK_FAILED = "HEALTH_CHECK_FAILED"
    INTERNAL_ERROR = "INTERNAL_ERROR"
    DELETING = "DELETING"


class ReplicaState(StrEnum):
    STARTING = "STARTING"
    UPDATING = "UPDATING"
    RECOVERING = "RECOVERING"
    RUNNING = "RUNNING"
    STOPPING = "STOPPING"
    STOPPED = "STOPPED"
    PENDING_MIGRATION = "PENDING_MIGRATION"


class ReplicaRank(BaseModel):
    """A replica's place in its deployment (``serve.get_replica_context().rank``).

    ``rank`` runs 0..n-1 over the deployment's replicas, ``node_rank`` numbers the
    nodes the deployment runs on, ``local_rank`` the deployment's replicas on one node.
    """

    rank: int = Field(description="Rank of the replica within its deployment.")
    node_rank: int = Field(description="Rank of the replica's node within the deployment.")
    local_rank: int = Field(description="Rank of the replica among those on its node.")


class ProxyStatus(StrEnum):
    STARTING = "STARTING"
    HEALTHY = "HEALTHY"
    UNHEALTHY = "UNHEALTHY"
    DRAINING = "DRAINING"
    DRAINED = "DRAINED"


class APIType(StrEnum):
    """Where an application came from: ``serve.run`` (imperative) or a config (declarative)."""

    UNKNOWN = "unknown"
    IMPERATIVE = "imperative"
    DECLARATIVE = "declarative"


# ---------------------------------------------------------------------------
# What serve.status() returns (dataclasses, as in Ray)
# ---------------------------------------------------------------------------


@dataclass
class DeploymentStatusOverview:
    status: DeploymentStatus
    status_trigger: DeploymentStatusTrigger
    replica_states: dict[ReplicaState, int]
    message: str
    #: An autoscaled deployment's running and target counts, bounds, demand and last
    #: decision (Schooner's addition; None when the deployment is not autoscaled).
    autoscaling: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "status": str(self.status),
            "status_trigger": str(self.status_trigger),
            "replica_states": {str(state): n for state, n in self.replica_states.items()},
            "message": self.message,
        }
        if self.autoscaling is not None:
            data["autoscaling"] = self.autoscaling
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DeploymentStatusOverview:
        return cls(
            status=DeploymentStatus(data["status"]),
            status_trigger=DeploymentStatusTrigger(data.get("status_trigger", "UNSPECIFIED")),
            replica_states={
                ReplicaState(state): int(n) for state, n in data.get("replica_states", {}).items()
            },
            message=data.get("message", ""),
            autoscaling=data.get("autoscaling"),
        )


@dataclass
class ApplicationStatusOverview:
    status: ApplicationStatus
    message: str
    last_deployed_time_s: float
    deployments: dict[str, DeploymentStatusOverview]
    #: The application's traffic policy, ``{"split": {app: weight}, "shadows": {app:
    #: fraction}}`` (Schooner's addition; None when it answers all its requests itself).
    traffic: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "status": str(self.status),
            "message": self.message,
            "last_deployed_time_s": self.last_deployed_time_s,
            "deployments": {name: d.to_dict() for name, d in self.deployments.items()},
        }
        if self.traffic is not None:
            data["traffic"] = self.traffic
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ApplicationStatusOverview:
        return cls(
            status=ApplicationStatus(data["status"]),
            message=data.get("message", ""),
            last_deployed_time_s=float(data.get("last_deployed_time_s", 0.0)),
            deployments={
                name: DeploymentStatusOverview.from_dict(d)
                for name, d in data.get("deployments", {}).items()
            },
            traffic=data.get("traffic") or None,
        )


@dataclass
class ServeStatus:
    """Proxy status per node id, status of each application, and the target capacity."""

    proxies: dict[str, ProxyStatus] = field(default_factory=dict)
    applications: dict[str, ApplicationStatusOverview] = field(default_factory=dict)
    target_capacity: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data; :meth:`from_dict` reverses it."""
        return {
            "proxies": {node: str(status) for node, status in self.proxies.items()},
            "applications": {name: a.to_dict() for name, a in self.applications.items()},
            "target_capacity": self.target_capacity,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ServeStatus:
        return cls(
            proxies={node: ProxyStatus(s) for node, s in data.get("proxies", {}).items()},
            applications={
                name: ApplicationStatusOverview.from_dict(a)
                for name, a in data.get("applications", {}).items()
            },
            target_capacity=data.get("target_capacity"),
        )


# ---------------------------------------------------------------------------
# Config documents
# ---------------------------------------------------------------------------

_NOT_IN_CONFIG_FILES = {
    "init_args": "constructor arguments come from .bind() in code or the builder's 'args'",
    "init_kwargs": "constructor arguments come from .bind() in code or the builder's 'args'",
}


class _DeploymentSchemaBase(BaseModel):
    """One ``deployments:`` entry: options overriding those set in code.

    Unknown keys are ignored, as in Ray. Which options the entry sets is
    ``model_fields_set``; :meth:`overrides` returns them for
    :meth:`DeploymentConfig.merge`.
    """

    model_config = ConfigDict(extra="ignore")

    name: Annotated[str, AfterValidator(_check_name)]

    @model_validator(mode="before")
    @classmethod
    def _reject_code_only_keys(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            for key, why in _NOT_IN_CONFIG_FILES.items():
                if key in data:
                    raise ValueError(f"'{key}' cannot be set in a config file: {why}")
        return data

    @model_validator(mode="after")
    def _check_combinations(self) -> _DeploymentSchemaBase:
        problems = option_combination_problems(self, complete=False)
        if problems:
            raise ValueError(" ".join(problems))
        return self

    def overrides(self) -> dict[str, Any]:
        """The options this entry sets (not ``name``), in declaration order."""
        return {
            k: getattr(self, k)
            for k in type(self).model_fields
            if k in self.model_fields_set and k != "name"
        }

    def is_autoscaling_configured(self) -> bool:
        values = self.overrides()
        return values.get("num_replicas") == "auto" or values.get("autoscaling_config") is not None


def _derive_deployment_schema() -> type[_DeploymentSchemaBase]:
    """``DeploymentSchema``: DeploymentConfig's fields, same types and checks, default unset."""
    annotated: Any = Annotated
    fields: dict[str, Any] = {}
    for name, info in DeploymentConfig.model_fields.items():
        if name == "name":
            continue
        annotation = (
            annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation
        )
        fields[name] = (
            annotation,
            Field(default=None, json_schema_extra=info.json_schema_extra),
        )
    return create_model(
        "DeploymentSchema", __base__=_DeploymentSchemaBase, __module__=__name__, **fields
    )


if TYPE_CHECKING:
    DeploymentSchema = _DeploymentSchemaBase
else:
    DeploymentSchema = _derive_deployment_schema()


def _check_route_prefix(value: str | None) -> str | None:
    if value is None:
        return None
    if not value.startswith("/"):
        raise ValueError(f"route_prefix {value!r} must start with '/'")
    if len(value) > 1 and value.endswith("/"):
        raise ValueError(f"route_prefix {value!r} must not end with '/' (unless it is '/')")
    if "{" in value or "}" in value:
        raise ValueError(f"route_prefix {value!r} must not contain '{{' or '}}'")
    return value


def _check_import_path(value: str) -> str:
    module, sep, attr = value.partition(":")
    if sep:
        ok = bool(module) and bool(attr) and ":" not in attr
    else:
        module, _, attr = value.rpartition(".")
        ok = bool(module) and bool(attr)
    if not ok:
        raise ValueError(
            f"import path {value!r} must look like 'module.submodule:attribute' "
            "(or 'module.submodule.attribute')"
        )
    return value


_TRAFFIC_KEYS = {"split": "weight", "shadows": "fraction"}
#: How far from 1 a split's weights may sum (as the controller allows: rounding in files).
_WEIGHT_TOLERANCE = 1e-6


def _traffic_number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{what} must be a number, got {_short_repr(value)}")
    number = float(value)
    if number != number or number in (float("inf"), float("-inf")):
        raise ValueError(f"{what} must be a finite number, got {_short_repr(value)}")
    return number


def _traffic_entries(section: str, value: Any) -> dict[str, float]:
    """``split``/``shadows`` as a mapping ``{app: number}``, from a list of ``{app: ...,
    weight|fraction: ...}`` entries or from a mapping; ValueError naming the entry."""
    key = _TRAFFIC_KEYS[section]
    if value is None:
        return {}
    if isinstance(value, Mapping):
        items: list[tuple[str, Any, str]] = []
        for app, number in value.items():
            if not isinstance(app, str) or not app:
                raise ValueError(
                    f"{section}: {_short_repr(app)} is not an application name (a non-empty string)"
                )
            items.append((app, number, f"{section} ('{app}')"))
    elif isinstance(value, list):
        items = []
        seen: dict[str, int] = {}
        for index, entry in enumerate(value):
            where = f"{section}[{index}]"
            if not isinstance(entry, Mapping):
                raise ValueError(
                    f"{where}: expected a mapping {{app: NAME, {key}: NUMBER}}, got "
                    f"{_short_repr(entry)}"
                )
            unknown = sorted(str(k) for k in entry if k not in ("app", key))
            if unknown:
                raise ValueError(
                    f"{where}: unknown key(s) {unknown}; an entry has 'app' and '{key}'"
                )
            app = entry.get("app")
            if not isinstance(app, str) or not app:
                raise ValueError(f"{where}: 'app' must be an application name, got {app!r}")
            where = f"{section}[{index}] ('{app}')"
            if key not in entry:
                raise ValueError(f"{where}: '{key}' is missing")
            if app in seen:
                raise ValueError(
                    f"{where}: application '{app}' is listed twice in {section} (entries "
                    f"{seen[app]} and {index}); list each application once"
                )
            seen[app] = index
            items.append((app, entry[key], where))
    else:
        raise ValueError(
            f"{section} must be a list of {{app: NAME, {key}: NUMBER}} entries or a mapping "
            f"of application names to {key}s, got {_short_repr(value)}"
        )
    result: dict[str, float] = {}
    for app, raw, where in items:
        number = _traffic_number(raw, f"{where}: the {key}")
        if number < 0:
            raise ValueError(f"{where}: the {key} is {number:g}; it must be >= 0")
        if section == "shadows" and number > 1:
            raise ValueError(
                f"{where}: the fraction is {number:g}; it must be between 0 and 1 "
                "(0 removes the shadow)"
            )
        result[app] = number
    return result


class TrafficSchema(BaseModel):
    """An application's ``traffic`` section (Schooner's addition to Ray's schema).

    ``split``: which applications answer this application's requests, by weight
    (summing to 1; the application itself may be one of them). ``shadows``: which
    applications get a copy of a fraction (0 to 1) of its requests. Each is a list
    of ``{app: NAME, weight: W}`` / ``{app: NAME, fraction: F}`` entries or a mapping
    ``{NAME: number}``; both are held as mappings and written back as lists.
    ``traffic: {}`` removes the application's policy; an entry without ``traffic``
    leaves it as it is.
    """

    model_config = ConfigDict(extra="forbid")

    split: dict[str, float] = Field(default_factory=dict)
    shadows: dict[str, float] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _normalize(cls, data: Any) -> Any:
        if data is None:
            return {}
        if isinstance(data, TrafficSchema):
            return data
        if not isinstance(data, Mapping):
            raise ValueError(
                f"expected a mapping with 'split' and/or 'shadows', got {_short_repr(data)}"
            )
        unknown = [k for k in data if k not in _TRAFFIC_KEYS]
        if unknown:
            import difflib

            hints = [
                f"'{k}' (did you mean '{close[0]}'?)"
                if (close := difflib.get_close_matches(str(k), list(_TRAFFIC_KEYS), n=1))
                else f"'{k}'"
                for k in unknown
            ]
            raise ValueError(
                f"unknown key {', '.join(hints)}; the section takes 'split' and 'shadows'"
            )
        out = {section: _traffic_entries(section, data[section]) for section in data}
        weights = out.get("split", {})
        total = sum(weights.values())
        if weights and abs(total - 1.0) > _WEIGHT_TOLERANCE:
            raise ValueError(f"the split's weights sum to {total:g}; they must sum to 1")
        return out

    @field_serializer("split")
    def _split_entries(self, split: dict[str, float]) -> list[dict[str, Any]]:
        return [{"app": app, "weight": weight} for app, weight in split.items()]

    @field_serializer("shadows")
    def _shadow_entries(self, shadows: dict[str, float]) -> list[dict[str, Any]]:
        return [{"app": app, "fraction": fraction} for app, fraction in shadows.items()]


class ServeApplicationSchema(BaseModel):
    """One application of a config document. Unknown keys are ignored, as in Ray.

    ``host``/``port`` belong in the top-level ``http_options`` and are rejected
    here; the single-application form is converted by :func:`parse_config_document`.
    """

    model_config = ConfigDict(extra="ignore")

    name: str = Field(default="default", min_length=1)
    route_prefix: Annotated[str | None, AfterValidator(_check_route_prefix)] = "/"
    import_path: Annotated[str, AfterValidator(_check_import_path)]
    runtime_env: dict[str, Any] = Field(default_factory=dict)
    args: dict[str, Any] = Field(default_factory=dict)
    deployments: list[DeploymentSchema] = Field(default_factory=list)
    logging_config: LoggingConfig | None = None
    external_scaler_enabled: bool = False
    autoscaling_policy: dict[str, Any] | None = None
    #: Schooner's addition: this application's traffic policy (see :class:`TrafficSchema`).
    #: Given (even empty) or not is what matters: see :attr:`sets_traffic`.
    traffic: TrafficSchema | None = None

    @field_validator("autoscaling_policy", mode="before")
    @classmethod
    def _check_app_policy(cls, value: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, AutoscalingPolicy):
            value = {"policy_function": value.policy_function, "policy_kwargs": value.policy_kwargs}
        if not isinstance(value, Mapping) or not isinstance(value.get("policy_function"), str):
            raise ValueError(
                "autoscaling_policy must be a mapping with policy_function (an import path "
                "'module:function') and optional policy_kwargs"
            )
        unknown = sorted(set(value) - {"policy_function", "policy_kwargs"})
        if unknown:
            raise ValueError(
                f"autoscaling_policy has unknown keys {unknown}; it takes policy_function "
                "and policy_kwargs"
            )
        policy = AutoscalingPolicy(**value)
        return {"policy_function": policy.policy_function, "policy_kwargs": policy.policy_kwargs}

    @model_validator(mode="before")
    @classmethod
    def _no_app_host_port(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            for key in ("host", "port"):
                if key in data:
                    raise ValueError(
                        f"'{key}' cannot be set per application; set http_options.{key} "
                        "at the top level of the config"
                    )
        return data

    @model_validator(mode="after")
    def _check(self) -> ServeApplicationSchema:
        names = self.deployment_names
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"deployment {', '.join(map(repr, dupes))} is listed more than once")
        if self.external_scaler_enabled:
            scaled = [d.name for d in self.deployments if d.is_autoscaling_configured()]
            if scaled:
                raise ValueError(
                    "external_scaler_enabled is true, so built-in autoscaling must be off, but "
                    f"these deployments configure it: {', '.join(map(repr, scaled))}"
                )
        if self.traffic is not None and self.name in self.traffic.shadows:
            raise ValueError(
                f"traffic.shadows: application '{self.name}' cannot shadow itself (a copy of "
                "each request would go back to it); shadow another application"
            )
        return self

    @property
    def deployment_names(self) -> list[str]:
        return [d.name for d in self.deployments]

    @property
    def sets_traffic(self) -> bool:
        """Whether this entry has a ``traffic`` key (``{}`` or null: remove the policy)."""
        return "traffic" in self.model_fields_set


class HTTPOptionsSchema(HTTPOptions):
    """``http_options`` of a config document: as :class:`HTTPOptions`, but ``host`` defaults
    to ``0.0.0.0`` (all interfaces), as Ray's config schema does."""

    host: str | None = "0.0.0.0"


gRPCOptionsSchema = gRPCOptions


class ServeDeploySchema(BaseModel):
    """A whole config document (also the REST ``PUT`` body). Unknown keys are ignored."""

    model_config = ConfigDict(extra="ignore")

    proxy_location: ProxyLocation = ProxyLocation.EveryNode
    http_options: HTTPOptionsSchema = Field(default_factory=HTTPOptionsSchema)
    grpc_options: gRPCOptions = Field(default_factory=gRPCOptions)
    controller_options: ControllerOptions | None = None
    logging_config: LoggingConfig | None = None
    tracing_config: TracingConfig | None = None
    applications: list[ServeApplicationSchema]
    target_capacity: float | None = Field(default=None, ge=0, le=100)

    @field_validator("applications")
    @classmethod
    def _unique(cls, apps: list[ServeApplicationSchema]) -> list[ServeApplicationSchema]:
        names = [a.name for a in apps]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"application name {', '.join(map(repr, dupes))} is used twice")
        routes = [a.route_prefix for a in apps if a.route_prefix is not None]
        dupes = sorted({r for r in routes if routes.count(r) > 1})
        if dupes:
            raise ValueError(
                f"route_prefix {', '.join(map(repr, dupes))} is used by more than one "
                "application; each application needs its own (or null for none)"
            )
        return apps


def parse_config_document(data: Any) -> ServeDeploySchema:
    """Validate a config document (multi-application, or the older single-application form).

    The single-application form has ``import_path`` (and ``runtime_env``,
    ``deployments``, ...) at the top level, and may have ``host``/``port``
    there; they move into one application and ``http_options``.
    Raises :class:`ServeConfigError` saying where and what is wrong.
    """
    if not isinstance(data, Mapping):
        raise ServeConfigError(
            f"Invalid Serve config: expected a mapping with 'applications', "
            f"got {type(data).__name__}."
        )
    doc = dict(data)
    if "import_path" in doc:
        if "applications" in doc:
            raise ServeConfigError(
                "Invalid Serve config: give either 'applications' (multi-application form) "
                "or a top-level 'import_path' (single-application form), not both."
            )
        if "traffic" in doc:
            raise ServeConfigError(
                "Invalid Serve config: 'traffic' is not supported in the single-application "
                "form (top-level 'import_path'); write the config in the multi-application "
                "form ('applications: [...]', one entry per application) and put 'traffic' "
                "in the entry of the application whose requests it splits."
            )
        doc = _single_to_multi(doc)
    try:
        return ServeDeploySchema.model_validate(doc)
    except ValidationError as exc:
        raise ServeConfigError(describe_config_errors(exc, doc)) from None


def _single_to_multi(doc: dict[str, Any]) -> dict[str, Any]:
    app_keys = set(ServeApplicationSchema.model_fields)
    app = {k: v for k, v in doc.items() if k in app_keys}
    out = {k: v for k, v in doc.items() if k not in app_keys and k not in ("host", "port")}
    http = dict(out.get("http_options") or {})
    for key in ("host", "port"):
        if key in doc:
            http[key] = doc[key]
    if http:
        out["http_options"] = http
    out["applications"] = [app]
    return out


def describe_config_errors(exc: ValidationError, data: Any) -> str:
    """One readable line per problem: where (with app/deployment names), got what, and why."""
    lines: list[str] = []
    for err in exc.errors():
        where, value, option = _locate(err["loc"], data, missing=err["type"] == "missing")
        if err["type"] == "missing":
            line = f"{where}: required field is missing"
        else:
            detail = option_error_detail(option, err) if option else _humanize(err["msg"])
            shown = "" if isinstance(value, Mapping | list) else f"got {_short_repr(value)}; "
            line = f"{where}: {shown}{detail}"
        if line not in lines:
            lines.append(line)
    if len(lines) == 1:
        return f"Invalid Serve config: {lines[0]}."
    return "Invalid Serve config:\n" + "\n".join(f"  - {line}" for line in lines)


def _locate(loc: tuple[int | str, ...], data: Any, *, missing: bool) -> tuple[str, Any, str]:
    """Walk ``loc`` through the raw document; name list items; stop at union-branch tags."""
    parts: list[str] = []
    current = data
    walked = 0
    for index, step in enumerate(loc):
        if isinstance(current, Mapping) and step in current:
            parts.append(str(step))
            current = current[step]
        elif isinstance(current, list) and isinstance(step, int) and step < len(current):
            item = current[step]
            label = f"[{step}]"
            if isinstance(item, Mapping) and isinstance(item.get("name"), str):
                label += f" ({item['name']!r})"
            parts[-1:] = [(parts[-1] if parts else "") + label]
            current = item
        elif missing and index == len(loc) - 1:
            parts.append(str(step))
            current = None
        else:
            break
        walked = index + 1
    # applications.<i>.deployments.<j>.<option>: explain with the option's own wording.
    in_option = walked == 5 and loc[0] == "applications" and loc[2] == "deployments"
    return (".".join(parts) or "(top level)"), current, str(loc[4]) if in_option else ""


def config_entry(name: str, config: DeploymentConfig) -> dict[str, Any]:
    """A ``deployments:`` entry with every setting of ``config`` (``schooner build``, and
    ``deployment_config`` in the admin API). The default request router is left out, so
    that Ray's tools, which import the router class, can read the entry."""
    entry: dict[str, Any] = {"name": name}
    for key, value in config.model_dump(mode="json").items():
        if key != "name":
            entry[key] = value
    router = entry.get("request_router_config") or {}
    if router.get("request_router_class") == DEFAULT_REQUEST_ROUTER:
        if router == RequestRouterConfig().model_dump(mode="json"):
            del entry["request_router_config"]  # all defaults: say nothing
        else:  # Ray's name for the same router: both Ray and Schooner read it
            router["request_router_class"] = RAY_DEFAULT_REQUEST_ROUTER
    if entry.get("autoscaling_config") is not None and isinstance(entry.get("num_replicas"), int):
        del entry["num_replicas"]  # autoscaling decides; both at once is an error
    return entry


def config_warnings(data: Any) -> list[str]:
    """Keys of a config document that nothing reads (ignored, as Ray ignores them): one
    line each, naming where it is and, for a likely typo, the key that was probably meant."""
    top, per_app = config_warnings_by_section(data)
    return top + [line for lines in per_app for line in lines]


def config_warnings_by_section(data: Any) -> tuple[list[str], list[list[str]]]:
    """:func:`config_warnings` split into the top level's and each application's (in the
    order of ``applications``)."""
    if not isinstance(data, Mapping):
        return [], []
    doc = dict(data)
    if "import_path" in doc and "applications" not in doc:
        doc = _single_to_multi(doc)
    top = _unknown(doc, set(ServeDeploySchema.model_fields), "")
    http = doc.get("http_options")
    if isinstance(http, Mapping):
        top += _unknown(http, set(HTTPOptionsSchema.model_fields), "http_options")
    apps = doc.get("applications")
    per_app: list[list[str]] = []
    for i, app in enumerate(apps if isinstance(apps, list) else []):
        lines: list[str] = []
        per_app.append(lines)
        if not isinstance(app, Mapping):
            continue
        where = f"applications[{i}] ({app.get('name', 'default')!r})"
        lines += _unknown(app, set(ServeApplicationSchema.model_fields), where)
        deps = app.get("deployments")
        for j, dep in enumerate(deps if isinstance(deps, list) else []):
            if isinstance(dep, Mapping):
                label = f"{where}.deployments[{j}] ({dep.get('name', '?')!r})"
                lines += _unknown(dep, set(DeploymentSchema.model_fields), label)
    return top, per_app


def _unknown(section: Mapping[str, Any], known: set[str], where: str) -> list[str]:
    import difflib

    lines = []
    for key in section:
        if key in known or not isinstance(key, str):
            continue
        close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.75)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        place = f"{where}.{key}" if where else key
        lines.append(f"{place}: unknown key, ignored{hint}")
    return lines
