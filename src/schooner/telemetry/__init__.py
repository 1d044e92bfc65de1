"""Built-in metrics: recorded in each process, reported to the head, exported there.

- :mod:`~schooner.telemetry.catalog`: the metrics Schooner records, with Ray Serve's
  names, types, labels and buckets (so Ray's Grafana dashboards work unchanged).
- :mod:`~schooner.telemetry.recorder`: this process's values; recording is a dict
  update on the caller's thread, with no lock shared across processes and no I/O.
- :mod:`~schooner.telemetry.reporter`: sends this process's snapshot to the head
  every few seconds over the controller connection.
- :mod:`~schooner.telemetry.exposition`: the head's store of every process's latest
  snapshot, rendered in the Prometheus text format with ``prometheus_client``.
"""
