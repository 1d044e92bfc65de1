"""The applications of the ``autoscale`` scenario (issue 13), one text for both systems.

``BENCH_SERVE=ray`` selects ``ray.serve``; anything else ``schooner``. Every
deployment does the same work (20 ms of ``asyncio.sleep``, then ``"ok"``),
takes at most 5 requests at once (the library default, said explicitly) and
asks for 0.1 CPU, so that 8 replicas and the rest fit on 2 CPUs (autoscaling
configs: ``autoscale_config``):

- ``Work``: 1 to 8 replicas aiming at 2 ongoing requests each;
- ``Zero``: 0 to 2 replicas, back to 0 after 3 s without requests;
- ``Cold``: one replica, no autoscaling (the cold replica start it is compared with).

Every other autoscaling option (the metrics push interval among them) is the
system's default.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import autoscale_config
from starlette.requests import Request

if os.environ.get("BENCH_SERVE") == "ray":
    from ray import serve
else:
    import schooner as serve

WORK_S = 0.02
COMMON: dict[str, Any] = {"max_ongoing_requests": 5, "ray_actor_options": {"num_cpus": 0.1}}


class _Work:
    async def __call__(self, request: Request) -> str:
        await asyncio.sleep(WORK_S)
        return "ok"


Work = serve.deployment(name="Work", autoscaling_config=autoscale_config.WORK, **COMMON)(_Work)
Zero = serve.deployment(name="Zero", autoscaling_config=autoscale_config.ZERO, **COMMON)(_Work)
Cold = serve.deployment(name="Cold", num_replicas=1, **COMMON)(_Work)
