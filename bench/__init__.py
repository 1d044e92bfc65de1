"""Schooner's benchmark suite: ``python -m bench`` (how to run it: docs/performance.md).

- ``run``: the command line, the table and the JSON file;
- ``scenarios``: what is measured, one function per scenario;
- ``context``: starting systems, measuring load, keeping records;
- ``systems``: how Schooner, bare uvicorn and Ray Serve are started;
- ``load``: wrk, or the built-in asyncio load generator;
- ``procs``, ``cpu``: process trees, memory, CPU and noise, stopping by pid;
- ``report``: rows, ratios and the issue-3 targets; ``machine``: what ran where;
- ``apps/``: the applications and drivers, run by Schooner's or Ray's Python.
"""
