"""The autoscaling configs of the ``autoscale`` scenario: plain data, read by the
applications (``autoscale_apps``) and by the suite (what to expect of them)."""

from __future__ import annotations

from typing import Any

#: ``Work``: 1 to 8 replicas aiming at 2 ongoing requests each.
WORK: dict[str, Any] = {
    "target_ongoing_requests": 2,
    "min_replicas": 1,
    "max_replicas": 8,
    "upscale_delay_s": 2,
    "downscale_delay_s": 10,
    "look_back_period_s": 5,
}
#: ``Zero``: 0 to 2 replicas, back to 0 after 3 s without requests.
ZERO: dict[str, Any] = {
    "target_ongoing_requests": 2,
    "min_replicas": 0,
    "max_replicas": 2,
    "upscale_delay_s": 0,
    "downscale_delay_s": 3,
    "downscale_to_zero_delay_s": 3,
    "look_back_period_s": 2,
}
