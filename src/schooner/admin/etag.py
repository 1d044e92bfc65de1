"""Entity tags of traffic policies, for read-modify-write without lost updates.

``GET /api/schooner/traffic/{app}`` answers with ``ETag: policy_etag(policy)``; a
``PUT`` with ``If-Match`` is refused with 412 when the policy changed in between
(another client, ``serve.set_traffic``, a rollout's step). The tag depends only on
the split and the shadows, so a client can also compute it from a policy it read.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

__all__ = ["matches", "policy_etag"]


def policy_etag(policy: Mapping[str, Any]) -> str:
    """The quoted entity tag of ``policy``'s split and shadows (rates do not count)."""
    content = {
        "split": dict(policy.get("split") or {}),
        "shadows": dict(policy.get("shadows") or {}),
    }
    text = json.dumps(content, sort_keys=True, separators=(",", ":"))
    return '"' + hashlib.blake2b(text.encode(), digest_size=8).hexdigest() + '"'


def matches(if_match: str, etag: str) -> bool:
    """Whether an ``If-Match`` header value (``*`` or a list of tags) admits ``etag``."""
    tags = [tag.strip() for tag in if_match.split(",")]
    return "*" in tags or etag in tags or etag in (t.removeprefix("W/") for t in tags)
