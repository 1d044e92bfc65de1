"""The Ray backend: Schooner's replicas and proxies as Ray actors on a Ray cluster.

Ray places the processes (resources, placement groups, node failures); the
control plane (the head, in a detached actor) and the data path (Schooner's
RPC over authenticated TCP between nodes, Unix sockets within one) stay
Schooner's. Only imported when Ray is used: the embedded runtime never
imports Ray.
"""
