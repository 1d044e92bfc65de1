"""The built-in metrics, with the names, types, label names and buckets Ray Serve 2.60
exports (Ray's exporter adds the ``ray_`` prefix and, to counters, ``_total``).

Processes also carry the labels of where they run (see ``recorder.set_process_labels``):
a replica's metrics get ``deployment``, ``replica`` and ``application``, as Ray's do.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Ray's ``DEFAULT_LATENCY_BUCKET_MS``: request and model-load latency, in milliseconds.
LATENCY_BUCKETS_MS = (
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 300.0, 400.0, 500.0, 1000.0,
    2000.0, 5000.0, 10000.0, 60000.0, 120000.0, 300000.0, 600000.0,
)  # fmt: skip

COUNTER = "counter"
GAUGE = "gauge"
HISTOGRAM = "histogram"


@dataclass(frozen=True)
class Spec:
    """One metric: its exported name (without ``_total``), kind, help text and labels."""

    name: str
    kind: str
    description: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()
    #: Recorded in a replica: exported with the replica's ``deployment``, ``replica`` and
    #: ``application`` labels first (see :data:`REPLICA_LABELS`).
    replica_scoped: bool = False


#: The labels a replica adds to its own metrics (as Ray Serve's replica metrics have).
REPLICA_LABELS = ("deployment", "replica", "application")


# -- proxy (labels: see Ray's request_ingress_metrics) ---------------------------------
HTTP_REQUESTS = Spec(
    "ray_serve_num_http_requests",
    COUNTER,
    "HTTP requests answered by the proxy, by route, method, application and status.",
    ("method", "route", "application", "status_code"),
)
HTTP_ERRORS = Spec(
    "ray_serve_num_http_error_requests",
    COUNTER,
    "HTTP requests the proxy answered with a 4xx or 5xx status.",
    ("route", "error_code", "method", "application"),
)
HTTP_DEPLOYMENT_ERRORS = Spec(
    "ray_serve_num_deployment_http_error_requests",
    COUNTER,
    "HTTP error responses, by the ingress deployment that served them.",
    ("deployment", "error_code", "method", "route", "application"),
)
HTTP_LATENCY = Spec(
    "ray_serve_http_request_latency_ms",
    HISTOGRAM,
    "Time from the proxy receiving an HTTP request to its response ending, in ms.",
    ("method", "route", "application", "status_code"),
    LATENCY_BUCKETS_MS,
)
HTTP_ONGOING = Spec(
    "ray_serve_num_ongoing_http_requests",
    GAUGE,
    "HTTP requests the proxy is handling now.",
    ("node_id", "node_ip_address"),
)
GRPC_REQUESTS = Spec(
    "ray_serve_num_grpc_requests",
    COUNTER,
    "gRPC calls answered by the proxy, by method, route, application and status code.",
    ("method", "route", "application", "status_code"),
)
GRPC_ERRORS = Spec(
    "ray_serve_num_grpc_error_requests",
    COUNTER,
    "gRPC calls the proxy ended with a status other than OK.",
    ("route", "error_code", "method", "application"),
)
GRPC_DEPLOYMENT_ERRORS = Spec(
    "ray_serve_num_deployment_grpc_error_requests",
    COUNTER,
    "gRPC calls ended with a status other than OK, by the ingress deployment that served them.",
    ("deployment", "error_code", "method", "route", "application"),
)
GRPC_LATENCY = Spec(
    "ray_serve_grpc_request_latency_ms",
    HISTOGRAM,
    "Time from the proxy receiving a gRPC call to its end, in ms.",
    ("method", "route", "application", "status_code"),
    LATENCY_BUCKETS_MS,
)
GRPC_ONGOING = Spec(
    "ray_serve_num_ongoing_grpc_requests",
    GAUGE,
    "gRPC calls the proxy is handling now.",
    ("node_id", "node_ip_address"),
)

# -- replica (the process labels add deployment, replica, application) -----------------
REPLICA_STARTS = Spec(
    "ray_serve_deployment_replica_starts",
    COUNTER,
    "Starts of this replica (1 per replica process).",
    replica_scoped=True,
)
DEPLOYMENT_REQUESTS = Spec(
    "ray_serve_deployment_request_counter",
    COUNTER,
    "Requests this replica has finished.",
    ("route",),
    replica_scoped=True,
)
DEPLOYMENT_ERRORS = Spec(
    "ray_serve_deployment_error_counter",
    COUNTER,
    "Requests on which this replica's code raised, by exception type.",
    ("route", "exception_type"),
    replica_scoped=True,
)
PROCESSING_LATENCY = Spec(
    "ray_serve_deployment_processing_latency_ms",
    HISTOGRAM,
    "Time this replica spent on a request, in ms.",
    ("route",),
    LATENCY_BUCKETS_MS,
    replica_scoped=True,
)
PROCESSING_QUERIES = Spec(
    "ray_serve_replica_processing_queries",
    GAUGE,
    "Requests this replica is working on now.",
    replica_scoped=True,
)

# -- routers and handles (in every caller: proxy, driver, replica) ---------------------
ROUTER_REQUESTS = Spec(
    "ray_serve_num_router_requests",
    COUNTER,
    "Requests this caller's router has sent to the deployment.",
    ("deployment", "route", "application", "handle", "actor_id"),
)
QUEUED_QUERIES = Spec(
    "ray_serve_deployment_queued_queries",
    GAUGE,
    "Requests of this caller waiting for a free replica of the deployment.",
    ("deployment", "application", "handle", "actor_id"),
)
ONGOING_AT_REPLICAS = Spec(
    "ray_serve_num_ongoing_requests_at_replicas",
    GAUGE,
    "Requests of this caller sent to the deployment's replicas, not finished.",
    ("deployment", "application", "handle", "actor_id"),
)
HANDLE_REQUESTS = Spec(
    "ray_serve_handle_request_counter",
    COUNTER,
    "Calls of handle.remote() made on this handle.",
    ("handle", "deployment", "route", "application"),
)

# -- multiplexing (in replicas) --------------------------------------------------------
MODEL_LOAD_LATENCY = Spec(
    "ray_serve_multiplexed_model_load_latency_ms",
    HISTOGRAM,
    "Time to load one multiplexed model, in ms.",
    (),
    LATENCY_BUCKETS_MS,
    replica_scoped=True,
)
MODEL_UNLOAD_LATENCY = Spec(
    "ray_serve_multiplexed_model_unload_latency_ms",
    HISTOGRAM,
    "Time to unload one multiplexed model, in ms.",
    (),
    LATENCY_BUCKETS_MS,
    replica_scoped=True,
)
NUM_MODELS = Spec(
    "ray_serve_num_multiplexed_models",
    GAUGE,
    "Multiplexed models loaded in this replica now.",
    replica_scoped=True,
)
REGISTERED_MODEL = Spec(
    "ray_serve_registered_multiplexed_model_id",
    GAUGE,
    "1 for each model id loaded in this replica.",
    ("model_id",),
    replica_scoped=True,
)
GET_MODEL_REQUESTS = Spec(
    "ray_serve_multiplexed_get_model_requests_counter",
    COUNTER,
    "Model lookups made by requests in this replica.",
    replica_scoped=True,
)
MODELS_UNLOADED = Spec(
    "ray_serve_multiplexed_models_unload_counter",
    COUNTER,
    "Multiplexed models this replica has unloaded.",
    replica_scoped=True,
)
MODELS_LOADED = Spec(
    "ray_serve_multiplexed_models_load_counter",
    COUNTER,
    "Multiplexed models this replica has loaded.",
    replica_scoped=True,
)

# -- controller ------------------------------------------------------------------------
REPLICA_HEALTHY = Spec(
    "ray_serve_deployment_replica_healthy",
    GAUGE,
    "1 while the replica is running and passing health checks, else 0.",
    ("deployment", "replica", "application"),
)
CONTROL_LOOP_DURATION = Spec(
    "ray_serve_controller_control_loop_duration_s",
    GAUGE,
    "Seconds the controller's last reconcile pass took.",
)
NUM_CONTROL_LOOPS = Spec(
    "ray_serve_controller_num_control_loops",
    GAUGE,
    "Reconcile passes the controller has made since it started.",
    ("actor_id",),
)

# -- autoscaling (the controller; labels as Ray's autoscaling_state) --------------------
_DEP_APP = ("deployment", "application")
AUTOSCALING_TARGET_REPLICAS = Spec(
    "ray_serve_autoscaling_target_replicas",
    GAUGE,
    "The replica count the controller is working towards.",
    _DEP_APP,
)
AUTOSCALING_DESIRED_REPLICAS = Spec(
    "ray_serve_autoscaling_desired_replicas",
    GAUGE,
    "The policy's last answer, before the min_replicas/max_replicas bounds.",
    _DEP_APP,
)
AUTOSCALING_TOTAL_REQUESTS = Spec(
    "ray_serve_autoscaling_total_requests",
    GAUGE,
    "Ongoing and queued requests as the autoscaler saw them (over the look-back window).",
    _DEP_APP,
)
AUTOSCALING_POLICY_TIME = Spec(
    "ray_serve_autoscaling_policy_execution_time_ms",
    GAUGE,
    "Milliseconds the last call of the autoscaling policy took.",
    ("deployment", "application", "policy_scope"),
)
AUTOSCALING_TARGET_ONGOING = Spec(
    "ray_serve_autoscaling_target_ongoing_requests",
    GAUGE,
    "The deployment's target_ongoing_requests.",
    _DEP_APP,
)
SHADOW_REQUESTS = Spec(
    "schooner_shadow_requests",
    COUNTER,
    "Copies of requests for shadow applications, by shadow application and outcome: "
    "sent, dropped (no free slot at once) or failed.",
    ("application", "outcome"),
)
AUTOSCALING_DECISIONS = Spec(
    "schooner_autoscaling_decisions",
    COUNTER,
    "Changes of a deployment's target replica count made by the autoscaler, by direction.",
    ("deployment", "application", "direction"),
)
