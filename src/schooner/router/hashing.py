"""Stable hashing for session affinity: the same key picks the same target everywhere.

Python's ``hash()`` of a string changes from process to process, so a proxy and
a driver would disagree; these functions use a fixed hash (BLAKE2b) of the key
and of each target's name, mixed per (key, target) with SplitMix64's finaliser.

*Rendezvous hashing* (highest random weight): each target gets a score from the
(key, target) pair and the highest score wins. Removing a target moves only the
keys it had; adding one takes about 1/N of the keys from the others.
*Weighted* rendezvous scores ``weight / -ln(u)`` with ``u`` uniform in (0, 1):
a target wins a share of keys equal to its weight, and changing one weight moves
only the keys that must move to or from that target.
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Sequence

__all__ = ["key_hash", "mix", "rendezvous", "weighted_rendezvous"]

_MASK = (1 << 64) - 1
_TWO_64 = float(1 << 64)


@functools.lru_cache(maxsize=8192)
def key_hash(key: str) -> int:
    """A 64-bit hash of ``key``, the same in every process and on every machine (the
    recent keys' hashes are kept: a shard key is hashed for the app and the replica)."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little")


def mix(a: int, b: int) -> int:
    """A well-spread 64-bit value from two 64-bit hashes (SplitMix64's finaliser)."""
    z = (a ^ (b * 0x9E3779B97F4A7C15)) & _MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return z ^ (z >> 31)


def rendezvous(key: int, targets: Sequence[int]) -> int:
    """The index of the target (given by its :func:`key_hash`) that ``key`` lands on;
    -1 when there are none."""
    best, best_score = -1, -1
    for i, target in enumerate(targets):
        score = mix(key, target)
        if score > best_score:
            best, best_score = i, score
    return best


def weighted_rendezvous(key: int, targets: Sequence[tuple[int, float]]) -> int:
    """The index of the (target hash, weight) pair ``key`` lands on, each target taking a
    share of keys equal to its weight (over the total); -1 when no weight is positive."""
    best, best_score = -1, -math.inf
    for i, (target, weight) in enumerate(targets):
        if weight <= 0:
            continue
        u = (mix(key, target) + 0.5) / _TWO_64  # in (0, 1)
        score = weight / -math.log(u)
        if score > best_score:
            best, best_score = i, score
    return best
