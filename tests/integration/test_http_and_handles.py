"""End to end: deployments in real replica processes, called over real HTTP and handles."""

from __future__ import annotations

import asyncio
import os
import threading
import time

import pytest
from starlette.requests import Request
from starlette.responses import PlainTextResponse, StreamingResponse

import schooner as serve
from schooner.handle import DeploymentHandle


@serve.deployment
def hello(request: Request) -> str:
    return f"hello {request.query_params.get('name', 'world')}"


@serve.deployment
class Counter:
    def __init__(self, start: int = 0) -> None:
        self.count = start

    def __call__(self, request: Request) -> dict:
        self.count += 1
        return {"count": self.count, "path": request.url.path}

    def incr(self, by: int = 1) -> int:
        self.count += by
        return self.count

    async def pid(self) -> int:
        return os.getpid()


@pytest.mark.both_backends
def test_function_deployment_over_http(clean) -> None:
    serve.run(hello.bind(), name="hello", route_prefix="/hello")
    r = clean.http.get("/hello", params={"name": "ada"})
    assert r.status_code == 200
    assert r.text == "hello ada"
    assert r.headers["content-type"].startswith("text/plain")
    assert r.headers["x-request-id"]


def test_x_request_id_is_echoed(clean) -> None:
    serve.run(hello.bind(), name="hello", route_prefix="/hello")
    r = clean.http.get("/hello", headers={"x-request-id": "my-id-123"})
    assert r.headers["x-request-id"] == "my-id-123"


@pytest.mark.both_backends
def test_class_deployment_json_and_handle_methods(clean) -> None:
    handle = serve.run(Counter.bind(10), name="counter", route_prefix="/count")
    r = clean.http.get("/count/sub/path")
    assert r.status_code == 200
    assert r.json() == {"count": 11, "path": "/count/sub/path"}
    assert handle.incr.remote(5).result() == 16
    assert handle.options(method_name="incr").remote(by=2).result() == 18
    assert handle.pid.remote().result() != os.getpid()


@pytest.mark.both_backends
def test_route_matching_longest_prefix_and_404(clean) -> None:
    serve.run(hello.bind(), name="root", route_prefix="/")
    serve.run(Counter.bind(), name="api", route_prefix="/api")
    assert clean.http.get("/api/x").json()["count"] == 1
    assert clean.http.get("/apix").text == "hello world"  # not under /api
    assert clean.http.get("/").text == "hello world"
    routes = clean.http.get("/-/routes")
    assert routes.status_code == 200
    assert routes.json() == {"/": "root", "/api": "api"}
    serve.delete("root")
    r = clean.http.get("/nothing-here")
    assert r.status_code == 404
    assert r.text == (
        f"Path '/nothing-here' not found. Ping http://127.0.0.1:{clean.port}"
        "/-/routes for available routes."
    )


@pytest.mark.both_backends
def test_healthz(clean) -> None:
    r = clean.http.get("/-/healthz")
    assert r.status_code == 503
    assert r.text == "Route table is not populated yet."
    serve.run(hello.bind(), name="hello", route_prefix="/hello")
    r = clean.http.get("/-/healthz")
    assert (r.status_code, r.text) == (200, "success")
    assert r.headers["content-type"] == "text/plain; charset=utf-8"


@serve.deployment
class Responses:
    async def __call__(self, request: Request):
        kind = request.query_params["kind"]
        if kind == "bytes":
            return b"\x00\x01raw"
        if kind == "list":
            return [1, 2, 3]
        if kind == "number":
            return 4.5
        if kind == "response":
            return PlainTextResponse("teapot", status_code=418, headers={"x-extra": "1"})
        if kind == "stream":

            async def numbers():
                for i in range(3):
                    yield f"chunk{i};"
                    await asyncio.sleep(0)

            return StreamingResponse(numbers(), media_type="text/plain")
        if kind == "boom":
            raise ValueError("bad kind")
        if kind == "echo":
            return {"body": (await request.body()).decode(), "method": request.method}
        return None


@pytest.mark.both_backends
def test_response_conversions(clean) -> None:
    serve.run(Responses.bind(), name="resp", route_prefix="/r")
    http = clean.http
    r = http.get("/r", params={"kind": "bytes"})
    assert r.content == b"\x00\x01raw"
    assert http.get("/r", params={"kind": "list"}).json() == [1, 2, 3]
    assert http.get("/r", params={"kind": "number"}).json() == 4.5
    r = http.get("/r", params={"kind": "response"})
    assert (r.status_code, r.text, r.headers["x-extra"]) == (418, "teapot", "1")
    assert http.get("/r", params={"kind": "stream"}).text == "chunk0;chunk1;chunk2;"
    r = http.post("/r", params={"kind": "echo"}, content=b"payload")
    assert r.json() == {"body": "payload", "method": "POST"}


@pytest.mark.both_backends
def test_user_exception_over_http_is_500_with_type_and_message(clean) -> None:
    serve.run(Responses.bind(), name="resp", route_prefix="/r")
    r = clean.http.get("/r", params={"kind": "boom"})
    assert r.status_code == 500
    assert "ValueError" in r.text and "bad kind" in r.text
    assert "Traceback" not in r.text
    assert r.headers["x-request-id"]


@serve.deployment
class Failing:
    def fail(self) -> None:
        raise KeyError("missing thing")

    def local(self) -> None:
        class Local(Exception):
            pass

        raise Local("defined inside a method")

    def unpicklable(self) -> None:
        class Unpicklable(Exception):
            def __reduce__(self):
                raise TypeError("no pickling")

        raise Unpicklable("cannot travel")


@pytest.mark.both_backends
def test_user_exception_reraises_in_caller_with_remote_traceback(clean) -> None:
    handle = serve.run(Failing.bind(), name="failing", route_prefix=None)
    with pytest.raises(KeyError, match="missing thing") as info:
        handle.fail.remote().result()
    assert "Remote traceback" in str(info.value.__cause__)
    assert "def fail" in str(info.value.__cause__) or "in fail" in str(info.value.__cause__)
    from schooner.exceptions import RemoteUserError

    with pytest.raises(Exception, match="defined inside a method") as info2:
        handle.local.remote().result()
    assert type(info2.value).__name__ == "Local"
    with pytest.raises(RemoteUserError) as info3:
        handle.unpicklable.remote().result()
    assert info3.value.type_name == "Unpicklable"
    assert "cannot travel" in str(info3.value)
    assert "Traceback" in info3.value.remote_traceback


@serve.deployment
class Streamer:
    def count(self, n: int):
        yield from range(n)

    async def acount(self, n: int):
        for i in range(n):
            yield {"i": i}


@pytest.mark.both_backends
def test_streaming_through_handles(clean) -> None:
    handle = serve.run(Streamer.bind(), name="stream", route_prefix=None)
    gen = handle.options(stream=True).count.remote(4)
    assert list(gen) == [0, 1, 2, 3]

    async def consume() -> list:
        return [x async for x in handle.options(stream=True, method_name="acount").remote(3)]

    assert asyncio.run(consume()) == [{"i": 0}, {"i": 1}, {"i": 2}]
    with pytest.raises(TypeError, match="stream=True"):
        handle.count.remote(2).result()


@serve.deployment(max_ongoing_requests=4)
class SlowSync:
    def __init__(self) -> None:
        self.active = 0
        self.peak = 0
        self.lock = threading.Lock()

    def work(self, seconds: float) -> int:
        with self.lock:
            self.active += 1
            self.peak = max(self.peak, self.active)
        time.sleep(seconds)
        with self.lock:
            self.active -= 1
        return os.getpid()

    async def peak_seen(self) -> int:
        return self.peak


def test_sync_methods_run_in_thread_pool_concurrently(clean) -> None:
    handle = serve.run(SlowSync.bind(), name="slow", route_prefix=None)
    responses = [handle.work.remote(0.5) for _ in range(4)]
    assert len({r.result() for r in responses}) == 1
    assert handle.peak_seen.remote().result() == 4


@serve.deployment(user_config={"greeting": "hi"})
class Configured:
    async def __init__(self) -> None:
        await asyncio.sleep(0)
        self.greeting = "unset"
        self.context = serve.get_replica_context()

    def reconfigure(self, config: dict) -> None:
        self.greeting = config["greeting"]

    def __call__(self, request: Request) -> dict:
        ctx = serve.get_replica_context()
        return {
            "greeting": self.greeting,
            "app": ctx.app_name,
            "deployment": ctx.deployment,
            "tag": ctx.replica_tag,
            "same": ctx.servable_object is self,
        }


@pytest.mark.both_backends
def test_async_init_user_config_and_replica_context(clean) -> None:
    serve.run(Configured.bind(), name="conf", route_prefix="/conf")
    body = clean.http.get("/conf").json()
    assert body["greeting"] == "hi"
    assert body["app"] == "conf" and body["deployment"] == "Configured"
    assert len(body["tag"]) == 8 and body["same"] is True
    with pytest.raises(serve.exceptions.RayServeException):
        serve.get_replica_context()


@serve.deployment
class Adder:
    def __init__(self, amount: int) -> None:
        self.amount = amount

    def add(self, x: int) -> int:
        return x + self.amount


@serve.deployment
class Combiner:
    def __init__(self, adders: list[DeploymentHandle], named: dict) -> None:
        self.adders = adders
        self.named = named

    async def __call__(self, request: Request) -> dict:
        x = int(request.query_params["x"])
        first = self.adders[0].add.remote(x)
        chained = self.adders[1].add.remote(first)  # response passed as an argument
        doubled = await self.named["double"].add.remote(await chained)
        return {"result": doubled, "handle_type": type(self.named["double"]).__name__}


@pytest.mark.both_backends
def test_composition_with_nested_handles(clean) -> None:
    app = Combiner.bind(
        [Adder.options(name="one").bind(1), Adder.options(name="ten").bind(10)],
        {"double": Adder.options(name="hundred").bind(100)},
    )
    serve.run(app, name="combo", route_prefix="/combo")
    assert clean.http.get("/combo", params={"x": 5}).json() == {
        "result": 116,
        "handle_type": "DeploymentHandle",
    }
    st = serve.status().applications["combo"]
    assert st.status == "RUNNING"
    assert set(st.deployments) == {"Combiner", "one", "ten", "hundred"}
    one = serve.get_deployment_handle("one", "combo")
    assert one.add.remote(one.add.remote(0)).result() == 2
    assert serve.get_app_handle("combo").deployment_name == "Combiner"


@pytest.mark.both_backends
def test_handle_response_awaited_from_user_event_loop(clean) -> None:
    handle = serve.run(Adder.bind(3), name="adder", route_prefix=None)

    async def main() -> list[int]:
        responses = [handle.add.remote(i) for i in range(20)]
        results = await asyncio.gather(*responses)
        with pytest.raises(RuntimeError, match="event loop"):
            handle.add.remote(1).result()
        return list(results)

    assert asyncio.run(main()) == [i + 3 for i in range(20)]


def test_result_timeout(clean) -> None:
    handle = serve.run(SlowSync.bind(), name="slow", route_prefix=None)
    with pytest.raises(TimeoutError):
        handle.work.remote(2).result(timeout_s=0.1)


@serve.deployment
class Unsendable:
    def __call__(self, request: Request) -> object:
        return threading.Lock() if request.query_params.get("lock") else object()

    def lock(self) -> object:
        return threading.Lock()

    def locks(self):
        yield threading.Lock()


def test_a_result_that_cannot_be_sent_is_a_clear_error(clean) -> None:
    handle = serve.run(Unsendable.bind(), name="unsendable", route_prefix="/unsendable")
    for query, type_name in (("", "object"), ("?lock=1", "lock")):
        resp = clean.http.get("/unsendable" + query)
        assert resp.status_code == 500
        assert f"returned a value of type '{type_name}', which cannot be sent as an HTTP" in (
            resp.text
        )
        assert "Return a str, bytes, a JSON-serializable value" in resp.text
    with pytest.raises(TypeError, match=r"The result \(of type '_thread.lock'\) cannot be sent"):
        handle.lock.remote().result()
    stream = handle.options(stream=True).locks.remote()
    with pytest.raises(TypeError, match=r"streamed item \(of type '_thread.lock'\)"):
        list(stream)
    assert clean.http.get("/-/healthz").status_code == 200  # nothing else is disturbed
