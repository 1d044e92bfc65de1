"""Per-request traffic choices: which application answers, which shadows get a copy.

The controller publishes one :class:`~schooner.rpc.messages.TrafficPolicy` per owner
application (key ``"traffic"``); each process compiles it once into a
:class:`CompiledPolicy` (cumulative weights for random choice, the target names'
hashes for shard keys) and keeps ``{owner's ingress: CompiledPolicy}``. A request to a
deployment that is not a policy owner's ingress costs one dict lookup that misses.

- Without a shard key the answering application is drawn at random by weight.
- With a shard key it is ``weighted_rendezvous(key_hash(key), [(key_hash(app), weight)])``:
  the same key lands on the same application in every process while the weights are
  unchanged, and a weight change moves only the keys it must.
- Each shadow gets a copy independently with probability equal to its fraction.

The random source is injectable (``rng``: a function returning a float in [0, 1)) so
tests can make draws repeatable.
"""

from __future__ import annotations

import random
from bisect import bisect_right
from collections.abc import Callable, Mapping

from schooner.router.hashing import key_hash, weighted_rendezvous
from schooner.rpc.messages import DeploymentID, TrafficPolicy, TrafficTarget

__all__ = ["CompiledPolicy", "compile_policies"]

_NO_SHADOWS: tuple[TrafficTarget, ...] = ()


class CompiledPolicy:
    """One owner's policy, ready for per-request choices (built once per policy)."""

    __slots__ = ("_cumulative", "_hashed", "_only", "_rng", "_targets", "policy", "shadows")

    def __init__(self, policy: TrafficPolicy, rng: Callable[[], float] = random.random) -> None:
        self.policy = policy
        self._rng = rng
        split = [t for t in policy.split if t.weight > 0]
        if not split:  # no split: the owner answers everything
            split = [TrafficTarget(policy.app_name, policy.ingress, 1.0)]
        self._targets = tuple(split)
        #: The one target when the split has a single positive weight (no draw needed).
        self._only = split[0] if len(split) == 1 else None
        total = sum(t.weight for t in split)
        cumulative: list[float] = []
        running = 0.0
        for target in split:
            running += target.weight / total
            cumulative.append(running)
        cumulative[-1] = 1.0  # rounding never leaves a gap at the top
        self._cumulative = cumulative
        self._hashed = [(key_hash(t.app_name), t.weight) for t in split]
        #: Shadows that may get copies (fraction > 0).
        self.shadows = tuple(s for s in policy.shadows if s.weight > 0)

    @property
    def targets(self) -> tuple[TrafficTarget, ...]:
        """The applications that may answer (positive weights only)."""
        return self._targets

    def choose(self, shard_key: str = "") -> TrafficTarget:
        """The application that answers a request (with ``shard_key``, deterministically)."""
        only = self._only
        if only is not None:
            return only
        if shard_key:
            return self._targets[weighted_rendezvous(key_hash(shard_key), self._hashed)]
        index = bisect_right(self._cumulative, self._rng())
        return self._targets[min(index, len(self._targets) - 1)]

    def shadow_copies(self) -> tuple[TrafficTarget, ...]:
        """The shadows that get a copy of this request (each drawn independently)."""
        shadows = self.shadows
        if not shadows:
            return _NO_SHADOWS
        rng = self._rng
        return tuple(s for s in shadows if s.weight >= 1.0 or rng() < s.weight)


def compile_policies(
    snapshot: Mapping[str, TrafficPolicy] | None,
    previous: Mapping[DeploymentID, CompiledPolicy],
    rng: Callable[[], float] = random.random,
) -> dict[DeploymentID, CompiledPolicy]:
    """``{owner's ingress: compiled policy}`` from the published snapshot; an unchanged
    policy keeps its compiled object from ``previous``. Returns a new dict (readers on
    other threads see either the old mapping or the new one, never a half-made one)."""
    result: dict[DeploymentID, CompiledPolicy] = {}
    for policy in (snapshot or {}).values():
        if not isinstance(policy, TrafficPolicy):
            continue
        old = previous.get(policy.ingress)
        if old is not None and old.policy == policy:
            result[policy.ingress] = old
        else:
            result[policy.ingress] = CompiledPolicy(policy, rng)
    return result
