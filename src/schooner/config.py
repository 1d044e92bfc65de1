"""Option models: every ``@serve.deployment`` option and every instance option.

Each option is declared once, as a pydantic field, with Ray Serve 2.x's name,
type and default. :class:`DeploymentConfig` is the declaration of the
deployment options: the decorator, ``.options()``, the config file schema
(:mod:`schooner.schema`) and the CLI derive from its fields. Every field also
says what changing it costs a live deployment (:data:`UPDATE_TYPES`).

Which options a user set is pydantic's ``model_fields_set``; later code uses
it to apply the override order config file > code > defaults
(:meth:`DeploymentConfig.merge`).
"""

from __future__ import annotations

import difflib
import importlib
import json
import warnings
from collections.abc import Callable, Mapping
from enum import StrEnum
from types import MappingProxyType
from typing import Annotated, Any, Literal, Self, cast

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails, PydanticCustomError

from schooner.exceptions import DeploymentOptionError
from schooner.instance_config import (
    ControllerOptions,
    EncodingType,
    HTTPOptions,
    LoggingConfig,
    ProxyLocation,
    TracingConfig,
    gRPCOptions,
)

__all__ = [
    "DEFAULT_AUTOSCALING_POLICY",
    "DEFAULT_REQUEST_ROUTER",
    "DEPLOYMENT_OPTION_NAMES",
    "UPDATE_TYPES",
    "AggregationFunction",
    "AutoscalingConfig",
    "AutoscalingPolicy",
    "BackpressureConfig",
    "ControllerOptions",
    "DeploymentConfig",
    "EncodingType",
    "GangPlacementStrategy",
    "GangRuntimeFailurePolicy",
    "GangSchedulingConfig",
    "HTTPOptions",
    "LoggingConfig",
    "ProxyLocation",
    "RequestRouterConfig",
    "TracingConfig",
    "UpdateType",
    "changed_options",
    "diff_update_type",
    "gRPCOptions",
]

DEFAULT_AUTOSCALING_POLICY = "schooner.autoscaling_policy:default_autoscaling_policy"
DEFAULT_REQUEST_ROUTER = "schooner.router:PowerOfTwoChoicesRequestRouter"

#: Ray's import path of the router that DEFAULT_REQUEST_ROUTER stands in for.
RAY_DEFAULT_REQUEST_ROUTER = "ray.serve._private.request_router:PowerOfTwoChoicesRequestRouter"

# Ray's spellings of the same defaults, so Ray config files that name them keep working.
_RAY_DEFAULT_PATHS = {
    "ray.serve.autoscaling_policy:default_autoscaling_policy": DEFAULT_AUTOSCALING_POLICY,
    "ray.serve._private.request_router:PowerOfTwoChoicesRequestRouter": DEFAULT_REQUEST_ROUTER,
    "ray.serve.request_router:PowerOfTwoChoicesRequestRouter": DEFAULT_REQUEST_ROUTER,
}


# ---------------------------------------------------------------------------
# Small shared validators
# ---------------------------------------------------------------------------


def _no_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise PydanticCustomError("bool_type", "Input should be a number, not a boolean")
    return value


def _json_serializable(value: Any) -> Any:
    try:
        json.dumps(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"must be JSON-serializable ({exc})") from None
    return value


def _import_path_of(value: Any) -> Any:
    """A class or function becomes its ``module:qualname`` import path."""
    if callable(value) and not isinstance(value, str):
        return f"{value.__module__}:{value.__qualname__}"
    if isinstance(value, str):
        return _RAY_DEFAULT_PATHS.get(value, value)
    return value


def _import_attr(path: str) -> Any:
    """Import ``pkg.mod:attr`` or ``pkg.mod.attr``."""
    module, sep, attr = path.partition(":")
    if not sep:
        module, _, attr = path.rpartition(".")
    obj: Any = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def _suggest(name: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(name, choices, n=1)
    return f" Did you mean '{close[0]}'?" if close else ""


NoBoolInt = Annotated[int, BeforeValidator(_no_bool)]
NoBoolFloat = Annotated[float, BeforeValidator(_no_bool)]
JsonObject = Annotated[dict[str, Any], AfterValidator(_json_serializable)]


# ---------------------------------------------------------------------------
# Autoscaling, routing, backpressure, logging
# ---------------------------------------------------------------------------


class AggregationFunction(StrEnum):
    """How metrics over the look-back window are reduced to one number."""

    MEAN = "mean"
    MAX = "max"
    MIN = "min"


class AutoscalingPolicy(BaseModel):
    """Which function decides replica counts (import path, or a callable kept for pickling)."""

    policy_function: str | Callable[..., Any] = DEFAULT_AUTOSCALING_POLICY
    policy_kwargs: JsonObject = Field(default_factory=dict)

    _callable: Callable[..., Any] | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _keep_callable(self) -> Self:
        fn = self.policy_function
        if callable(fn):
            self._callable = fn
        object.__setattr__(self, "policy_function", _import_path_of(fn))
        return self

    def get_policy(self) -> Callable[..., Any]:
        """The policy callable (imported from ``policy_function`` unless given as a callable)."""
        if self._callable is not None:
            return self._callable
        fn: Callable[..., Any] = _import_attr(str(self.policy_function))
        return fn

    @property
    def carries_code(self) -> bool:
        """The policy cannot be imported by its path (defined in ``__main__`` or inside a
        function): the callable itself travels, pickled by value."""
        path = str(self.policy_function)
        return self._callable is not None and (
            path.startswith("__main__:") or "<locals>" in path or "<lambda>" in path
        )

    def __getstate__(self) -> dict[Any, Any]:
        # An importable policy travels as its path: the head imports it with the
        # application's sys.path (pickling it by reference would fail in the head).
        state: dict[Any, Any] = super().__getstate__()
        if not self.carries_code:
            private = dict(state.get("__pydantic_private__") or {})
            private["_callable"] = None
            state["__pydantic_private__"] = private
        return state

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, AutoscalingPolicy):
            return NotImplemented
        return (self.policy_function, self.policy_kwargs) == (
            other.policy_function,
            other.policy_kwargs,
        )

    __hash__ = None  # type: ignore[assignment]


class AutoscalingConfig(BaseModel):
    """Ray Serve 2.x autoscaling options. Unknown keys are ignored (as Ray) with a warning."""

    model_config = ConfigDict(validate_assignment=True)

    min_replicas: NonNegativeInt = 1
    initial_replicas: NonNegativeInt | None = None
    max_replicas: PositiveInt = 1
    target_ongoing_requests: PositiveFloat | None = 2.0
    metrics_interval_s: PositiveFloat = 10.0
    look_back_period_s: PositiveFloat = 30.0
    smoothing_factor: PositiveFloat = 1.0
    upscale_smoothing_factor: PositiveFloat | None = None
    downscale_smoothing_factor: PositiveFloat | None = None
    upscaling_factor: PositiveFloat | None = None
    downscaling_factor: PositiveFloat | None = None
    downscale_delay_s: NonNegativeFloat = 600.0
    downscale_to_zero_delay_s: NonNegativeFloat | None = None
    upscale_delay_s: NonNegativeFloat = 30.0
    aggregation_function: AggregationFunction = AggregationFunction.MEAN
    policy: AutoscalingPolicy = Field(default_factory=AutoscalingPolicy)

    @model_validator(mode="before")
    @classmethod
    def _warn_unknown(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            known = list(cls.model_fields)
            for key in data:
                if key not in cls.model_fields:
                    hint = _suggest(str(key), known)
                    warnings.warn(
                        f"Ignoring unknown autoscaling_config option {key!r}.{hint}",
                        UserWarning,
                        stacklevel=2,
                    )
        return data

    @field_validator("aggregation_function", mode="before")
    @classmethod
    def _lower_aggregation(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _check_bounds(self) -> Self:
        lo, hi, init = self.min_replicas, self.max_replicas, self.initial_replicas
        if hi < lo:
            raise ValueError(
                f"max_replicas ({hi}) must be greater than or equal to min_replicas ({lo})"
            )
        if init is not None and not lo <= init <= hi:
            raise ValueError(
                f"initial_replicas ({init}) must be between min_replicas ({lo}) "
                f"and max_replicas ({hi})"
            )
        if self.metrics_interval_s != 10.0:
            warnings.warn(
                "autoscaling_config.metrics_interval_s is deprecated (as in Ray Serve).",
                DeprecationWarning,
                stacklevel=2,
            )
        return self

    @classmethod
    def default(cls) -> AutoscalingConfig:
        """What ``num_replicas="auto"`` means: min 1, max 100, target 2 ongoing requests."""
        return cls(min_replicas=1, max_replicas=100, target_ongoing_requests=2.0)

    def get_upscaling_factor(self) -> float:
        return self.upscaling_factor or self.upscale_smoothing_factor or self.smoothing_factor

    def get_downscaling_factor(self) -> float:
        return self.downscaling_factor or self.downscale_smoothing_factor or self.smoothing_factor

    def get_target_ongoing_requests(self) -> float:
        return self.target_ongoing_requests if self.target_ongoing_requests is not None else 2.0

    def initial_num_replicas(self) -> int:
        return self.initial_replicas if self.initial_replicas is not None else self.min_replicas


class BackpressureConfig(BaseModel):
    """The HTTP answer to requests rejected because ``max_queued_requests`` is full."""

    model_config = ConfigDict(extra="forbid")

    status_code: Literal[503, 429] = 503
    retry_after_s: NonNegativeFloat | None = Field(default=None, allow_inf_nan=False)


class GangPlacementStrategy(StrEnum):
    """Where the replicas of one gang are placed (``GangSchedulingConfig``)."""

    PACK = "PACK"  # as few nodes as possible, best effort
    SPREAD = "SPREAD"  # as many nodes as possible, best effort
    STRICT_PACK = "STRICT_PACK"  # one node
    STRICT_SPREAD = "STRICT_SPREAD"  # one replica per node


class GangRuntimeFailurePolicy(StrEnum):
    """What happens to a running gang when one of its replicas fails."""

    RESTART_GANG = "RESTART_GANG"
    RESTART_REPLICA = "RESTART_REPLICA"


class GangSchedulingConfig(BaseModel):
    """Replicas started and placed in groups of ``gang_size`` (``num_replicas`` is a
    multiple of it). Accepted and validated as in Ray Serve; on one machine a gang is
    placed like any ``gang_size`` replicas."""

    model_config = ConfigDict(extra="forbid")

    gang_size: PositiveInt
    gang_timeout_s: PositiveFloat = 300.0
    gang_placement_strategy: GangPlacementStrategy = GangPlacementStrategy.PACK
    max_retries: NonNegativeInt = 3
    runtime_failure_policy: GangRuntimeFailurePolicy = GangRuntimeFailurePolicy.RESTART_GANG


class RequestRouterConfig(BaseModel):
    """Which router picks replicas for a deployment, and its retry backoff."""

    request_router_class: str | type = DEFAULT_REQUEST_ROUTER
    request_router_kwargs: JsonObject = Field(default_factory=dict)
    request_routing_stats_period_s: PositiveFloat = 10.0
    request_routing_stats_timeout_s: PositiveFloat = 30.0
    initial_backoff_s: PositiveFloat = 0.025
    backoff_multiplier: PositiveFloat = 2.0
    max_backoff_s: PositiveFloat = 0.5

    _class: type | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _keep_class(self) -> Self:
        cls = self.request_router_class
        if isinstance(cls, type):
            self._class = cls
        object.__setattr__(self, "request_router_class", _import_path_of(cls))
        return self

    def get_request_router_class(self) -> type:
        if self._class is not None:
            return self._class
        cls: type = _import_attr(str(self.request_router_class))
        return cls

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RequestRouterConfig):
            return NotImplemented
        return self.model_dump() == other.model_dump()

    __hash__ = None  # type: ignore[assignment]


# ---------------------------------------------------------------------------
# Deployment options
# ---------------------------------------------------------------------------

#: What changing an option costs a live deployment. "light": only the controller
#: and routers act on it (no replica is touched). "reconfigure": live replicas are
#: sent the new config without a restart (the user's ``reconfigure()`` runs only if
#: ``user_config`` changed). "restart": replicas are replaced, as for new code.
UpdateType = Literal["light", "reconfigure", "restart"]
_COST: dict[str, int] = {"light": 0, "reconfigure": 1, "restart": 2}


class _RayActorOptions(BaseModel):
    """The ``ray_actor_options`` keys Ray Serve 2.60 allows, and their types."""

    model_config = ConfigDict(extra="forbid")

    num_cpus: NonNegativeFloat | None = None
    num_gpus: NonNegativeFloat | None = None
    memory: NonNegativeFloat | None = None
    resources: dict[str, NonNegativeFloat] = Field(default_factory=dict)
    accelerator_type: str | None = None
    runtime_env: dict[str, Any] = Field(default_factory=dict)
    label_selector: dict[str, str] | None = None
    fallback_strategy: list[dict[str, Any]] | None = None


_RAY_ACTOR_OPTION_KEYS = tuple(_RayActorOptions.model_fields)


def _check_ray_actor_options(value: dict[str, Any] | None) -> dict[str, Any] | None:
    if value is None:
        return None
    for key in value:
        if key not in _RAY_ACTOR_OPTION_KEYS:
            hint = _suggest(key, list(_RAY_ACTOR_OPTION_KEYS))
            raise ValueError(
                f"{key!r} is not allowed in ray_actor_options.{hint}"
                f" Allowed: {', '.join(_RAY_ACTOR_OPTION_KEYS)}"
            )
    try:
        checked = _RayActorOptions.model_validate(value)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise ValueError(f"{where} {_humanize(err['msg'])}") from None
    for reserved in ("CPU", "GPU", "memory", "object_store_memory"):
        if reserved in checked.resources:
            raise ValueError(f"use num_cpus/num_gpus/memory instead of {reserved!r} in resources")
    return checked.model_dump(exclude_unset=True)


def _check_bundles(value: list[dict[str, float]] | None) -> list[dict[str, float]] | None:
    if value is not None:
        if not value:
            raise ValueError("must be a non-empty list of resource dicts, e.g. [{'CPU': 1}]")
        for bundle in value:
            if not bundle or all(v == 0 for v in bundle.values()):
                raise ValueError("a bundle cannot be empty or have only zero resources")
    return value


def _check_name(value: str | None) -> str | None:
    if value is not None and ("#" in value or not value):
        raise ValueError("must be a non-empty string without '#'")
    return value


def _option(
    default: Any, update: UpdateType, accepts: str | None = None, *, factory: bool = False
) -> Any:
    """A deployment option's field: its default, update cost and (for errors) what it accepts."""
    extra: dict[str, Any] = {"update_type": update}
    if accepts is not None:
        extra["accepts"] = accepts
    if factory:
        return Field(default_factory=default, json_schema_extra=extra)
    return Field(default=default, json_schema_extra=extra)


NumReplicas = Annotated[int, Field(ge=1), BeforeValidator(_no_bool)] | Literal["auto"] | None
_PARTIAL = "schooner_partial"  # validation context key: skip combination checks and "auto"


class DeploymentConfig(BaseModel):
    """Every ``@serve.deployment`` option, with Ray Serve 2.x defaults (immutable).

    Build it with :meth:`from_options` to get :class:`DeploymentOptionError`
    instead of pydantic errors. After validation, either ``autoscaling_config``
    is set and ``num_replicas`` is ``"auto"`` or ``None`` (``"auto"`` filled in
    :meth:`AutoscalingConfig.default` under the user's autoscaling fields), or
    ``autoscaling_config`` is None and ``num_replicas`` is an int.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: Annotated[str | None, AfterValidator(_check_name)] = _option(
        None, "light", "a non-empty string without '#'"
    )
    num_replicas: NumReplicas = _option(1, "light", 'an integer >= 1, "auto" or None')
    max_ongoing_requests: Annotated[NoBoolInt, Field(gt=0)] = _option(
        5, "reconfigure", "an integer greater than 0"
    )
    max_queued_requests: NoBoolInt = _option(-1, "light", "-1 (no limit) or an integer >= 1")
    backpressure_config: BackpressureConfig = _option(BackpressureConfig, "light", factory=True)
    user_config: Annotated[Any, AfterValidator(_json_serializable)] = _option(None, "reconfigure")
    autoscaling_config: AutoscalingConfig | None = _option(None, "light")
    graceful_shutdown_wait_loop_s: Annotated[NoBoolFloat, Field(ge=0)] = _option(
        2.0, "reconfigure", "a number >= 0"
    )
    graceful_shutdown_timeout_s: Annotated[NoBoolFloat, Field(ge=0)] = _option(
        20.0, "light", "a number >= 0"
    )
    health_check_period_s: Annotated[NoBoolFloat, Field(gt=0)] = _option(
        10.0, "light", "a number greater than 0"
    )
    health_check_timeout_s: Annotated[NoBoolFloat, Field(gt=0)] = _option(
        30.0, "light", "a number greater than 0"
    )
    ray_actor_options: Annotated[
        dict[str, Any] | None, AfterValidator(_check_ray_actor_options)
    ] = _option(None, "restart")
    placement_group_bundles: Annotated[
        list[dict[str, NonNegativeFloat]] | None, AfterValidator(_check_bundles)
    ] = _option(None, "restart")
    placement_group_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] | None = (
        _option(None, "restart", "one of PACK, SPREAD, STRICT_PACK, STRICT_SPREAD")
    )
    placement_group_bundle_label_selector: list[dict[str, str]] | None = _option(None, "restart")
    max_replicas_per_node: Annotated[NoBoolInt, Field(ge=1, le=100)] | None = _option(
        None, "restart", "None or an integer from 1 to 100"
    )
    logging_config: LoggingConfig | None = _option(None, "reconfigure")
    request_router_config: RequestRouterConfig = _option(RequestRouterConfig, "light", factory=True)
    max_constructor_retry_count: Annotated[NoBoolInt, Field(gt=0)] = _option(
        20, "light", "an integer greater than 0"
    )
    gang_scheduling_config: GangSchedulingConfig | None = _option(None, "restart")
    deployment_actors: list[dict[str, Any]] | None = _option(None, "restart")
    rolling_update_percentage: Annotated[NoBoolFloat, Field(gt=0, le=1)] = _option(
        0.2, "light", "a number in (0, 1]"
    )
    max_surge_percent: Annotated[NoBoolInt, Field(ge=0, le=100)] = _option(
        0, "light", "an integer from 0 to 100"
    )

    @field_validator("max_queued_requests")
    @classmethod
    def _queue_limit(cls, value: int) -> int:
        if value < 1 and value != -1:
            raise PydanticCustomError("queue_limit", "Input should be -1 or >= 1")
        return value

    @model_validator(mode="after")
    def _complete(self, info: ValidationInfo) -> Self:
        if info.context and info.context.get(_PARTIAL):
            return self
        problems = option_combination_problems(self, complete=True)
        if problems:
            raise ValueError("\n".join(problems))
        # Fill in what "auto" and "not set" mean (frozen model: set in place once).
        if self.num_replicas == "auto":
            user = self.autoscaling_config
            merged = AutoscalingConfig.default().model_dump(exclude_unset=True)
            if user is not None:  # attribute values: keeps a policy given as a callable
                merged.update({k: getattr(user, k) for k in user.model_fields_set})
            object.__setattr__(self, "autoscaling_config", AutoscalingConfig(**merged))
        elif self.autoscaling_config is None and self.num_replicas is None:
            object.__setattr__(self, "num_replicas", 1)
        elif self.autoscaling_config is not None and isinstance(self.num_replicas, int):
            object.__setattr__(self, "num_replicas", None)  # the default 1: unused
        return self

    # -- construction ------------------------------------------------------

    @classmethod
    def from_options(cls, **options: Any) -> DeploymentConfig:
        """Validate user options; raise :class:`DeploymentOptionError` naming the bad one."""
        _check_option_names(options)
        return cls._validated(options, partial=False)

    @classmethod
    def _validated(cls, options: Mapping[str, Any], *, partial: bool) -> DeploymentConfig:
        try:
            return cls.model_validate(dict(options), context={_PARTIAL: partial})
        except ValidationError as exc:
            raise DeploymentOptionError(_describe_option_errors(exc, options)) from None

    def merge(self, overrides: Mapping[str, Any]) -> DeploymentConfig:
        """A copy with ``overrides`` applied on top; set options are the union of both.

        Each overridden option is replaced whole (``user_config``,
        ``ray_actor_options`` and ``autoscaling_config`` are not deep-merged). An
        integer ``num_replicas`` override drops autoscaling; an
        ``autoscaling_config`` override drops an integer ``num_replicas``.
        """
        _check_option_names(overrides)
        given = self._validated(overrides, partial=True)
        update = {k: getattr(given, k) for k in given.model_fields_set}
        if isinstance(update.get("num_replicas"), int) and "autoscaling_config" not in update:
            update["autoscaling_config"] = None
        if (
            update.get("autoscaling_config") is not None
            and "num_replicas" not in update
            and isinstance(self.num_replicas, int)
        ):
            update["num_replicas"] = None
        data = {k: getattr(self, k) for k in self.model_fields_set}
        data.update(update)
        return self._validated(data, partial=False)

    # -- reading -----------------------------------------------------------

    def user_options(self) -> dict[str, Any]:
        """The options the user set (as given, after validation)."""
        return {k: getattr(self, k) for k in type(self).model_fields if k in self.model_fields_set}

    @property
    def autoscaling_enabled(self) -> bool:
        return self.autoscaling_config is not None

    def initial_num_replicas(self) -> int:
        """Replicas to start with: autoscaling's initial (or min) count, else num_replicas."""
        if self.autoscaling_config is not None:
            return self.autoscaling_config.initial_num_replicas()
        return self.num_replicas if isinstance(self.num_replicas, int) else 1

    def required_resources(self) -> dict[str, float]:
        """Resources one replica asks for, in Ray's names (CPU defaults to 1, as Ray Serve)."""
        opts = self.ray_actor_options or {}
        needs = {k: float(v) for k, v in (opts.get("resources") or {}).items()}
        num_cpus = opts.get("num_cpus")
        needs["CPU"] = 1.0 if num_cpus is None else float(num_cpus)
        if opts.get("num_gpus") is not None:
            needs["GPU"] = float(opts["num_gpus"])
        if opts.get("memory") is not None:
            needs["memory"] = float(int(opts["memory"]))
        if opts.get("accelerator_type"):
            needs[f"accelerator_type:{opts['accelerator_type']}"] = 0.001
        return needs

    @classmethod
    def update_type_for(cls, option: str) -> UpdateType:
        """What changing ``option`` costs a live deployment. Code changes always cost "restart"."""
        try:
            return UPDATE_TYPES[option]
        except KeyError:
            raise DeploymentOptionError(_unknown_option_message(option)) from None


def option_combination_problems(config: BaseModel, *, complete: bool) -> list[str]:
    """Rules between deployment options, for a config or a config-file entry.

    ``complete`` is false for config-file entries, where unset options still
    come from code: then only the options present are checked.
    """
    problems: list[str] = []
    get = config.__dict__.get
    bundles = get("placement_group_bundles")
    if (
        "num_replicas" in config.model_fields_set
        and isinstance(get("num_replicas"), int)
        and get("autoscaling_config") is not None
    ):
        problems.append(
            "num_replicas cannot be a number when autoscaling_config is set; "
            'use num_replicas="auto" or leave it unset.'
        )
    for option in ("placement_group_strategy", "placement_group_bundle_label_selector"):
        if get(option) is not None and bundles is None:
            problems.append(f"{option} requires placement_group_bundles.")
    if get("max_replicas_per_node") is not None and bundles is not None:
        problems.append("max_replicas_per_node cannot be used with placement_group_bundles.")
    gang = get("gang_scheduling_config")
    if gang is not None:
        for option in ("max_replicas_per_node", "placement_group_strategy"):
            if get(option) is not None:
                problems.append(f"{option} cannot be used with gang_scheduling_config.")
        replicas = get("num_replicas")
        if isinstance(replicas, int) and replicas % gang.gang_size:
            problems.append(
                f"num_replicas ({replicas}) must be a multiple of gang_size ({gang.gang_size})."
            )
    selector = get("placement_group_bundle_label_selector")
    if selector is not None and bundles is not None and len(selector) not in (1, len(bundles)):
        problems.append(
            "placement_group_bundle_label_selector needs 1 selector or one per bundle "
            f"({len(selector)} for {len(bundles)} bundles)."
        )
    if complete and bundles and isinstance(config, DeploymentConfig):
        first = bundles[0]
        for resource, amount in config.required_resources().items():
            if resource != "memory" and first.get(resource, 0.0) < amount:
                problems.append(
                    f"the replica needs {resource}={amount:g} (from ray_actor_options) but the "
                    f"first placement group bundle, where it is placed, has "
                    f"{first.get(resource, 0.0):g}."
                )
    return problems


DEPLOYMENT_OPTION_NAMES: tuple[str, ...] = tuple(DeploymentConfig.model_fields)


def _extra(option: str) -> dict[str, Any]:
    extra = DeploymentConfig.model_fields[option].json_schema_extra
    assert isinstance(extra, dict)
    return extra


UPDATE_TYPES: Mapping[str, UpdateType] = MappingProxyType(
    {name: cast(UpdateType, _extra(name)["update_type"]) for name in DEPLOYMENT_OPTION_NAMES}
)
_ACCEPTS: Mapping[str, str] = MappingProxyType(
    {n: str(_extra(n)["accepts"]) for n in DEPLOYMENT_OPTION_NAMES if "accepts" in _extra(n)}
)


def changed_options(old: DeploymentConfig, new: DeploymentConfig) -> list[str]:
    """Names of the options whose values differ between two configs."""
    return [n for n in DEPLOYMENT_OPTION_NAMES if getattr(old, n) != getattr(new, n)]


def diff_update_type(old: DeploymentConfig, new: DeploymentConfig) -> UpdateType | None:
    """The most expensive update needed to go from ``old`` to ``new`` (None: no change)."""
    kinds = [UPDATE_TYPES[n] for n in changed_options(old, new)]
    if not kinds:
        return None
    return max(kinds, key=lambda kind: _COST[kind])


# ---------------------------------------------------------------------------
# Error messages
# ---------------------------------------------------------------------------

_REMOVED = {
    "version": "has been removed; Schooner (like Ray Serve 2.x) versions deployments itself",
    "max_concurrent_queries": "was renamed to 'max_ongoing_requests'",
    "route_prefix": "is not a deployment option; pass route_prefix to serve.run() or the config",
    "init_args": "is not a deployment option; pass constructor arguments to .bind()",
    "init_kwargs": "is not a deployment option; pass constructor arguments to .bind()",
}


def _unknown_option_message(name: str) -> str:
    if name in _REMOVED:
        return f"Deployment option '{name}' {_REMOVED[name]}."
    return (
        f"Unknown deployment option '{name}'.{_suggest(name, list(DEPLOYMENT_OPTION_NAMES))}"
        f" Valid options: {', '.join(DEPLOYMENT_OPTION_NAMES)}."
    )


def _check_option_names(options: Mapping[str, Any]) -> None:
    for name in options:
        if name not in DeploymentConfig.model_fields:
            raise DeploymentOptionError(_unknown_option_message(str(name)))


def _humanize(msg: str) -> str:
    """Pydantic's message as the tail of ours: "Input should be X" -> "must be X"."""
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix) :]
    if msg == "Extra inputs are not permitted":
        return "not a known field"
    if msg.startswith("Input should be"):
        msg = "must be" + msg[len("Input should be") :]
    return msg.rstrip(".")


def _short_repr(value: Any, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def option_error_detail(option: str, error: ErrorDetails) -> str:
    """What is wrong with one option value, as "must be ..." (shared with the config schema)."""
    if option in _ACCEPTS and error["type"] != "value_error":
        return f"must be {_ACCEPTS[option]}"
    return _humanize(error["msg"])


def _describe_option_errors(exc: ValidationError, options: Mapping[str, Any]) -> str:
    lines: list[str] = []
    seen: set[str] = set()
    for err in exc.errors():
        loc = err["loc"]
        if not loc:
            lines.append(f"Invalid deployment options: {_humanize(err['msg'])}.")
            continue
        option = str(loc[0])
        if option in seen:
            continue
        seen.add(option)
        if option in _ACCEPTS or len(loc) == 1 or err["type"] == "value_error":
            where, got = option, options.get(option, err["input"])
        else:
            where, got = ".".join(str(p) for p in loc), err["input"]
        lines.append(
            f"Invalid deployment option '{where}': got {_short_repr(got)}; "
            f"{option_error_detail(option, err)}."
        )
    return "\n".join(lines)
