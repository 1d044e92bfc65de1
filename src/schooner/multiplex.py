"""Model multiplexing: ``@serve.multiplexed`` and ``get_multiplexed_model_id()``.

``@serve.multiplexed(max_num_models_per_replica=3)`` decorates an
``async def get_model(self, model_id: str)`` (or an async function of
``model_id``) that loads a model. Calling it returns the model from a cache
kept per instance (so per replica), least recently used first out:

- a cached model is returned at once and becomes the most recently used;
- concurrent calls for the same id share one load, and models load one at a
  time, so the cache never holds more than ``max_num_models_per_replica``
  (-1: no limit);
- to make room, the least recently used model is evicted first: its
  ``async def __del__`` is awaited, or a plain ``__del__`` run in a thread
  (errors are logged; nothing stops the interpreter calling ``__del__``
  again when the object is collected, so keep it idempotent);
- a failed load is raised in every caller waiting for it and caches nothing.

``get_multiplexed_model_id()`` is the current request's model id: the
``serve_multiplexed_model_id`` HTTP header, or
``handle.options(multiplexed_model_id=...)``; "" when none was given.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import time
import weakref
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

from schooner import context
from schooner.telemetry import catalog, recorder

__all__ = ["get_multiplexed_model_id", "multiplexed"]

logger = logging.getLogger("schooner.multiplex")

_MISSING: Any = object()
_caches: weakref.WeakSet[_ModelCache] = weakref.WeakSet()
#: Called (on the loop of the cache that changed) whenever a model starts loading, fails
#: to load or is evicted: the replica reports :func:`_multiplexed_model_ids` to the
#: controller for model-aware routing (see :mod:`schooner.replica.models`).
_on_change: list[Callable[[], None]] = []

_get_model_requests = recorder.counter(catalog.GET_MODEL_REQUESTS)
_models_loaded = recorder.counter(catalog.MODELS_LOADED)
_models_unloaded = recorder.counter(catalog.MODELS_UNLOADED)
_load_latency = recorder.histogram(catalog.MODEL_LOAD_LATENCY)
_unload_latency = recorder.histogram(catalog.MODEL_UNLOAD_LATENCY)


def _loaded_models() -> list[recorder.Series]:
    """Gauges: how many models this replica holds, and 1 per model id (as Ray has them)."""
    loaded = [model_id for cache in list(_caches) for model_id in cache.models]
    if not loaded and not _caches:
        return []
    series: list[recorder.Series] = [(catalog.NUM_MODELS, (), float(len(loaded)))]
    series.extend((catalog.REGISTERED_MODEL, (model_id,), 1.0) for model_id in loaded)
    return series


recorder.add_collector(_loaded_models)


def get_multiplexed_model_id() -> str:
    """The multiplexed model id of the request being served ("" if none)."""
    return context.current_request().multiplexed_model_id


def _multiplexed_model_ids() -> set[str]:
    """Ids of the models loaded or loading in this process (for model-aware routing)."""
    return {model_id for cache in list(_caches) for model_id in cache.model_ids()}


def _changed() -> None:
    for callback in list(_on_change):
        try:
            callback()
        except Exception:
            logger.exception("a multiplexed-models listener failed")


class _ModelCache:
    """The loaded models of one instance (or function): an LRU cache with shared loads."""

    def __init__(self, load: Callable[[str], Awaitable[Any]], capacity: int) -> None:
        self._load_fn = load
        self.capacity = capacity
        self.models: OrderedDict[str, Any] = OrderedDict()
        self._loading: dict[str, asyncio.Future[Any]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        _caches.add(self)

    def model_ids(self) -> list[str]:
        return [*self.models, *self._loading]

    async def get(self, model_id: str) -> Any:
        if type(model_id) is not str:
            raise TypeError(f"The model ID must be a string, got {type(model_id).__name__}.")
        if not model_id:
            raise ValueError(
                "The model ID cannot be empty: send the 'serve_multiplexed_model_id' header, "
                "or call the handle with `.options(multiplexed_model_id=...)`."
            )
        _get_model_requests.inc(())
        model = self.models.get(model_id, _MISSING)
        if model is not _MISSING:
            self.models.move_to_end(model_id)
            return model
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # futures and the lock belong to one loop
            self._loop, self._loading, self._lock = loop, {}, asyncio.Lock()
        future = self._loading.get(model_id)
        if future is None:
            future = self._loading[model_id] = loop.create_future()
            task = loop.create_task(self._load(model_id, future))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            _changed()
        # A cancelled caller leaves the load running for the others (and the cache).
        return await asyncio.shield(future)

    async def _load(self, model_id: str, future: asyncio.Future[Any]) -> None:
        try:
            async with self._lock:
                while self.capacity > 0 and len(self.models) >= self.capacity:
                    await self._evict_lru()
                logger.info("Loading model '%s'.", model_id)
                started = time.perf_counter()
                model = await self._load_fn(model_id)
                _load_latency.observe((), (time.perf_counter() - started) * 1000.0)
                _models_loaded.inc(())
                self.models[model_id] = model
            future.set_result(model)
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError):
                future.cancel()
                raise
            future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
        finally:
            if self._loading.get(model_id) is future:
                del self._loading[model_id]
                if model_id not in self.models:
                    _changed()  # the load failed or was cancelled

    async def _evict_lru(self) -> None:
        model_id, model = self.models.popitem(last=False)
        logger.info("Unloading model '%s'.", model_id)
        _changed()
        _models_unloaded.inc(())
        unload = getattr(model, "__del__", None)
        if unload is None:
            return
        started = time.perf_counter()
        try:
            if inspect.iscoroutinefunction(unload):
                await unload()
            else:
                await asyncio.to_thread(unload)
        except Exception:
            logger.exception("Unloading model '%s' failed.", model_id)
        _unload_latency.observe((), (time.perf_counter() - started) * 1000.0)


def multiplexed(func: Callable[..., Any] | None = None, max_num_models_per_replica: int = 3) -> Any:
    """Cache the models an async loader returns, per replica (see the module docstring).

    Use as ``@multiplexed`` or ``@multiplexed(max_num_models_per_replica=...)``.
    Raises TypeError for a loader that is not ``async def`` or does not take
    exactly a model id (after ``self``), TypeError/ValueError for an invalid
    ``max_num_models_per_replica`` (an integer >= 1, or -1 for no limit).
    """
    if func is not None and not callable(func):
        raise TypeError("@serve.multiplexed can only decorate functions or methods.")
    capacity = max_num_models_per_replica
    if not isinstance(capacity, int) or isinstance(capacity, bool):
        raise TypeError(f"max_num_models_per_replica must be an integer, got {capacity!r}.")
    if capacity != -1 and capacity < 1:
        raise ValueError(
            f"max_num_models_per_replica must be >= 1, or -1 for no limit; got {capacity}."
        )

    def decorate(func: Callable[..., Any]) -> Any:
        name = getattr(func, "__qualname__", repr(func))
        if not inspect.iscoroutinefunction(func):
            raise TypeError(
                f"@serve.multiplexed can only decorate 'async def' functions or methods; "
                f"'{name}' must be async."
            )
        num_args = len(inspect.signature(func).parameters)
        if num_args not in (1, 2):
            raise TypeError(
                f"@serve.multiplexed loader '{name}' must take the model id as its only "
                "argument (after `self` for a method), e.g. "
                "`async def get_model(self, model_id: str)`."
            )
        attr = f"_schooner_multiplex_{name}"
        function_cache: list[_ModelCache] = []  # when the loader is a plain function

        @functools.wraps(func)
        async def wrapper(*args: Any) -> Any:
            if len(args) != num_args:
                raise TypeError(f"'{name}' takes exactly one argument: the model id.")
            if num_args == 1:
                if not function_cache:
                    function_cache.append(_ModelCache(func, capacity))
                return await function_cache[0].get(args[0])
            owner, model_id = args
            state = getattr(owner, "__dict__", None)
            if state is None:
                raise TypeError(
                    f"@serve.multiplexed method '{name}' needs instances with a __dict__."
                )
            cache = state.get(attr)
            if cache is None:
                cache = state[attr] = _ModelCache(functools.partial(func, owner), capacity)
            return await cache.get(model_id)

        return wrapper

    return decorate(func) if func is not None else decorate
