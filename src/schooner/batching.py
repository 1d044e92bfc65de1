"""Request batching: ``@serve.batch``.

Decorate an ``async def`` method (or function) that takes a list and returns a
list of the same length, in order, or an async generator that yields such
lists. Callers pass one item and await one result (or iterate over their own
stream of results); concurrent calls are grouped into batches:

- a batch starts once ``max_batch_size`` items wait (with ``batch_size_fn``:
  once ``batch_size_fn(items)`` reaches it, or the next item would pass it),
  or ``batch_wait_timeout_s`` after its oldest item arrived;
- at most ``max_concurrent_batches`` batches run at once; items keep waiting
  in arrival order meanwhile, so the next batch is as full as the load allows;
- a batch is split by multiplexed model id; each part runs with that id as the
  current request's, so ``get_multiplexed_model_id()`` works inside;
- an exception raised by the function is raised in every caller of the batch;
  callers cancelled before their batch starts are left out of it;
- each instance (``self``) has its own queue, made on first call on the
  running event loop. Settings belong to the decorated function; change them
  at run time (e.g. in ``reconfigure``) with ``set_max_batch_size`` and
  ``set_batch_wait_timeout_s``; read them with ``get_max_batch_size`` and
  ``get_batch_wait_timeout_s``.

Streaming: element ``i`` of each yielded list goes to caller ``i``;
``StopIteration`` in that place ends caller ``i``'s stream. A caller's item is
queued when it starts iterating. The generator is closed once no caller is
listening any more.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import weakref
from collections import deque
from collections.abc import AsyncGenerator, Callable
from typing import Any, NamedTuple

from schooner import context
from schooner.exceptions import RayServeException

__all__ = ["batch"]

_MISSING: Any = object()
_P = inspect.Parameter


class _Failed(NamedTuple):
    error: BaseException


class _Stream(asyncio.Queue[Any]):
    """One caller's results from a streaming batch; ends with ``_MISSING`` or a ``_Failed``."""

    closed = False  # the caller stopped listening
    finished = False

    def done(self) -> bool:
        return self.finished or self.closed

    def set_exception(self, error: BaseException | None) -> None:
        """End the stream, raising ``error`` after the items already in it (None: no error)."""
        if not self.finished:
            self.finished = True
            self.put_nowait(_MISSING if error is None else _Failed(error))


class _Item(NamedTuple):
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    sink: asyncio.Future[Any] | _Stream
    request: context.RequestContext
    arrived_at: float


class _Settings:
    """The decorated function, how to batch its arguments, and its adjustable settings."""

    def __init__(
        self, func: Callable[..., Any], size_fn: Callable[[list[Any]], int] | None
    ) -> None:
        self.func, self.name, self.batch_size_fn = func, func.__qualname__, size_fn
        self.streaming = inspect.isasyncgenfunction(func)
        params = list(inspect.signature(func).parameters.values())
        parts = self.name.split(".")
        self.is_method = (len(parts) > 1 and parts[-2] != "<locals>") or (
            bool(params) and params[0].name == "self"
        )
        own = params[1:] if self.is_method else params
        if not own:
            raise TypeError(
                f"@serve.batch function '{self.name}' must take the batch as an argument "
                "(a list), e.g. `async def f(self, items: list)`."
            )
        self.signature = inspect.Signature(own)
        self.single = len(own) == 1 and own[0].kind is not _P.KEYWORD_ONLY
        self.max_batch_size, self.batch_wait_timeout_s, self.max_concurrent_batches = 10, 0.0, 1
        self.attr = f"_schooner_batch_queue_{self.name}"
        self.queues: weakref.WeakSet[_BatchQueue] = weakref.WeakSet()
        self.function_queue: _BatchQueue | None = None  # when not a method

    def __getstate__(self) -> dict[str, Any]:  # queues stay behind when pickled
        return {**self.__dict__, "queues": None, "function_queue": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, queues=weakref.WeakSet())

    def set_max_batch_size(self, max_batch_size: int) -> None:
        self.max_batch_size = _check_int("max_batch_size", max_batch_size)
        self._poke()

    def set_batch_wait_timeout_s(self, batch_wait_timeout_s: float) -> None:
        self.batch_wait_timeout_s = _check_timeout(batch_wait_timeout_s)
        self._poke()

    def get_max_batch_size(self) -> int:
        return self.max_batch_size

    def get_batch_wait_timeout_s(self) -> float:
        return self.batch_wait_timeout_s

    def _poke(self) -> None:
        for queue in list(self.queues):  # may run in a thread (a sync `reconfigure`)
            if not queue.loop.is_closed():
                queue.loop.call_soon_threadsafe(queue.schedule)

    def queue(self, owner: Any, loop: asyncio.AbstractEventLoop) -> _BatchQueue:
        if owner is None:
            if self.function_queue is None or self.function_queue.loop is not loop:
                self.function_queue = _BatchQueue(self, None, loop)
            return self.function_queue
        state = getattr(owner, "__dict__", None)
        if state is None:
            raise TypeError(f"@serve.batch method '{self.name}' needs instances with a __dict__.")
        queue: _BatchQueue | None = state.get(self.attr)
        if queue is None or queue.loop is not loop:
            queue = state[self.attr] = _BatchQueue(self, owner, loop)
        return queue

    def check(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Raise TypeError for arguments the function does not take (as a plain call would)."""
        if not self.single or len(args) != 1 or kwargs:
            self.signature.bind(*args, **kwargs)

    def call(self, owner: Any, items: list[_Item]) -> Any:
        """Call the function with one list per argument."""
        first = items[0]
        if any(
            len(i.args) != len(first.args) or i.kwargs.keys() != first.kwargs.keys() for i in items
        ):
            raise TypeError(
                f"The calls batched together for '{self.name}' passed different arguments; "
                "pass the same arguments in the same way (by position or by name) in every call."
            )
        args = [[i.args[n] for i in items] for n in range(len(first.args))]
        kwargs = {key: [i.kwargs[key] for i in items] for key in first.kwargs}
        return self.func(*([] if owner is None else [owner]), *args, **kwargs)

    def size(self, items: list[_Item]) -> int | None:
        """``batch_size_fn`` of the items' first arguments; None (item failed) on error."""
        assert self.batch_size_fn is not None
        try:
            size = self.batch_size_fn([_first(i) for i in items])
        except Exception as exc:
            items[-1].sink.set_exception(exc)
            return None
        if size > self.max_batch_size and len(items) == 1:
            items[0].sink.set_exception(
                RuntimeError(
                    f"batch_size_fn gives an item of '{self.name}' size {size}, more than "
                    f"max_batch_size ({self.max_batch_size}), so it can never be batched."
                )
            )
            return None
        return size


def _first(item: _Item) -> Any:
    return item.args[0] if item.args else next(iter(item.kwargs.values()))


class _BatchQueue:
    """Waiting items of one instance (or function) on one event loop, and its running batches."""

    def __init__(self, settings: _Settings, owner: Any, loop: asyncio.AbstractEventLoop) -> None:
        self.settings, self.owner, self.loop = settings, owner, loop
        self.items: deque[_Item] = deque()
        self.running = 0  # batches holding one of the max_concurrent_batches slots
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        settings.queues.add(self)

    def put(self, item: _Item) -> None:
        self.items.append(item)
        self.schedule(due_ok=False)  # a due batch starts from the timer: same-tick calls join it

    def schedule(self, due_ok: bool = True) -> None:
        """Start batches that are full (or due) while slots are free; else set the timer."""
        s = self.settings
        while self.running < s.max_concurrent_batches:
            while self.items and self.items[0].sink.done():
                self.items.popleft()
            if not self.items:
                break
            deadline = self.items[0].arrived_at + s.batch_wait_timeout_s
            batch = self._take(due_ok and self.loop.time() >= deadline)
            if batch is None:
                if self._timer is None or self._timer.when() != deadline:
                    if self._timer is not None:
                        self._timer.cancel()
                    self._timer = self.loop.call_at(deadline, self._on_timer)
                return
            if batch:
                self._start(batch)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_timer(self) -> None:
        self._timer = None
        self.schedule()

    def _take(self, due: bool) -> list[_Item] | None:
        """Remove and return the next batch; None if it is neither full nor due."""
        items, limit = self.items, self.settings.max_batch_size
        batch: list[_Item] = []
        if self.settings.batch_size_fn is None:
            if len(items) < limit and not due:
                return None
            while items and len(batch) < limit:
                item = items.popleft()
                if not item.sink.done():
                    batch.append(item)
            return batch
        full = False
        for item in items:
            size = None if item.sink.done() else self.settings.size([*batch, item])
            if size is not None:
                full = size >= limit
                if size > limit:
                    break
                batch.append(item)
                if full:
                    break
        if not (full or due):
            return None
        taken = {id(item) for item in batch}
        self.items = deque(i for i in items if id(i) not in taken and not i.sink.done())
        return batch

    def _start(self, batch: list[_Item]) -> None:
        """Run one batch, holding one slot, as one task per multiplexed model id."""
        self.running += 1
        groups: dict[str, list[_Item]] = {}
        for item in batch:
            groups.setdefault(item.request.multiplexed_model_id, []).append(item)
        left = len(groups)

        def finished(task: asyncio.Task[None]) -> None:
            nonlocal left
            self._tasks.discard(task)
            left -= 1
            if left == 0:
                self.running -= 1
                self.schedule()

        for group in groups.values():
            ctx = contextvars.Context()  # nothing else of the callers' contexts leaks in
            request = group[0].request._replace(request_id="", session_id="")
            ctx.run(context._request_context.set, request)
            task = self.loop.create_task(self._run(group), context=ctx)
            self._tasks.add(task)
            task.add_done_callback(finished)

    async def _run(self, items: list[_Item]) -> None:
        s = self.settings
        try:
            if s.streaming:
                await self._stream(s.call(self.owner, items), items)
                return
            results = await s.call(self.owner, items)
            _check_length(s.name, results, len(items))
            for item, value in zip(items, results, strict=False):
                if isinstance(item.sink, asyncio.Future) and not item.sink.done():
                    item.sink.set_result(value)
        except BaseException as exc:
            for item in items:
                if isinstance(exc, asyncio.CancelledError) and isinstance(
                    item.sink, asyncio.Future
                ):
                    item.sink.cancel()
                elif not item.sink.done():
                    item.sink.set_exception(exc)
            if not isinstance(exc, Exception):
                raise

    async def _stream(self, generator: AsyncGenerator[Any, None], items: list[_Item]) -> None:
        streams = [item.sink for item in items if isinstance(item.sink, _Stream)]
        try:
            async for results in generator:
                _check_length(self.settings.name, results, len(streams))
                for stream, value in zip(streams, results, strict=False):
                    if stream.done():
                        pass
                    elif value is StopIteration or value is StopAsyncIteration:
                        stream.set_exception(None)
                    else:
                        stream.put_nowait(value)
                if all(stream.done() for stream in streams):
                    break
        finally:
            await generator.aclose()
        for stream in streams:
            stream.set_exception(None)


def _check_length(name: str, results: Any, expected: int) -> None:
    try:
        count = len(results)
    except TypeError:
        raise RayServeException(
            f"@serve.batch function '{name}' must return a list with one result per input, "
            f"not {type(results).__name__}."
        ) from None
    if count != expected:
        raise RayServeException(
            f"@serve.batch function '{name}' returned {count} results for a batch of "
            f"{expected} inputs; it must return exactly one result per input, in order."
        )


def _check_int(name: str, value: Any) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an integer >= 1, got {value!r}.")
    if value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}.")
    return value


def _check_timeout(value: Any) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise TypeError(f"batch_wait_timeout_s must be a number >= 0, got {value!r}.")
    if not value >= 0:
        raise ValueError(f"batch_wait_timeout_s must be a number >= 0, got {value!r}.")
    return float(value)


def batch(
    _func: Callable[..., Any] | None = None,
    /,
    max_batch_size: int = 10,
    batch_wait_timeout_s: float = 0.01,
    max_concurrent_batches: int = 1,
    batch_size_fn: Callable[[list[Any]], int] | None = None,
) -> Any:
    """Batch calls to an async method or function (see the module docstring).

    Use as ``@batch`` or ``@batch(max_batch_size=..., ...)``. Raises TypeError
    or ValueError for invalid settings, and TypeError for a function that is
    not ``async def``.
    """
    if _func is not None and not callable(_func):
        raise TypeError("@serve.batch can only decorate functions or methods.")
    max_batch_size = _check_int("max_batch_size", max_batch_size)
    batch_wait_timeout_s = _check_timeout(batch_wait_timeout_s)
    max_concurrent_batches = _check_int("max_concurrent_batches", max_concurrent_batches)
    if batch_size_fn is not None and not callable(batch_size_fn):
        raise TypeError(f"batch_size_fn must be a callable or None, got {batch_size_fn!r}.")

    def decorate(func: Callable[..., Any]) -> Any:
        if not (inspect.iscoroutinefunction(func) or inspect.isasyncgenfunction(func)):
            raise TypeError(
                "@serve.batch can only decorate 'async def' functions or methods (or async "
                f"generators); '{getattr(func, '__qualname__', func)}' must be async."
            )
        s = _Settings(func, batch_size_fn)
        s.max_batch_size, s.batch_wait_timeout_s = max_batch_size, batch_wait_timeout_s
        s.max_concurrent_batches = max_concurrent_batches

        def enqueue(args: tuple[Any, ...], kwargs: dict[str, Any], sink: Any) -> None:
            owner = None
            if s.is_method:
                if not args:
                    raise TypeError(f"'{s.name}' is a method; call it on an instance.")
                owner, args = args[0], args[1:]
            s.check(args, kwargs)
            loop = asyncio.get_running_loop()
            item = _Item(args, kwargs, sink, context.current_request(), loop.time())
            s.queue(owner, loop).put(item)

        @functools.wraps(func)
        async def stream_wrapper(*args: Any, **kwargs: Any) -> AsyncGenerator[Any, None]:
            stream = _Stream()
            enqueue(args, kwargs, stream)
            try:
                while (value := await stream.get()) is not _MISSING:
                    if isinstance(value, _Failed):
                        raise value.error
                    yield value
            finally:
                stream.closed = True

        @functools.wraps(func)
        async def unary_wrapper(*args: Any, **kwargs: Any) -> Any:
            future = asyncio.get_running_loop().create_future()
            enqueue(args, kwargs, future)
            return await future

        wrapper: Any = stream_wrapper if s.streaming else unary_wrapper
        wrapper.set_max_batch_size = s.set_max_batch_size
        wrapper.set_batch_wait_timeout_s = s.set_batch_wait_timeout_s
        wrapper.get_max_batch_size = wrapper._get_max_batch_size = s.get_max_batch_size
        wrapper.get_batch_wait_timeout_s = s.get_batch_wait_timeout_s
        wrapper._get_batch_wait_timeout_s = s.get_batch_wait_timeout_s
        return wrapper

    return decorate(_func) if _func is not None else decorate
