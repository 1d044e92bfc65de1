"""``schooner.ingress``: class-based FastAPI views, other ASGI apps, lifespan, request driving.

Everything runs in-process: requests go through :func:`call_asgi`, as in a replica.
"""

import asyncio
import inspect
import json
import pickle
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException, Request, WebSocket
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from schooner.ingress import (
    IngressApp,
    build_asgi_app,
    call_asgi,
    ingress,
    is_ingress_class,
    start_lifespan,
)

# -- a driver: one request through call_asgi, as the replica does ------------


class Reply:
    def __init__(self, messages: list[dict[str, Any]]) -> None:
        self.messages = messages
        start = messages[0]
        assert start["type"] == "http.response.start"
        self.status: int = start["status"]
        self.headers = {k.decode().lower(): v.decode() for k, v in start.get("headers", [])}
        self.chunks = [m.get("body", b"") for m in messages[1:]]
        self.body = b"".join(self.chunks)

    def json(self) -> Any:
        return json.loads(self.body)


def request(
    app: IngressApp,
    method: str,
    path: str,
    *,
    body: Any = None,
    query: str = "",
    root_path: str = "",
    headers: dict[str, str] | None = None,
    spec_version: str = "2.3",
) -> Reply:
    raw = b"" if body is None else json.dumps(body).encode()
    header_list = [(b"host", b"testserver")]
    if body is not None:
        header_list.append((b"content-type", b"application/json"))
    header_list += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": spec_version},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": root_path,
        "query_string": query.encode(),
        "headers": header_list,
        "server": ("testserver", 80),
        "client": ("127.0.0.1", 5000),
    }
    messages: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)

    asyncio.run(call_asgi(app, scope, raw, send))
    return Reply(messages)


def build(instance: object) -> IngressApp:
    return asyncio.run(build_asgi_app(instance))


# -- the main service: a module-level app, as users write it -----------------


class Item(BaseModel):
    name: str
    price: float


class ItemOut(BaseModel):
    name: str


class Teapot(Exception):
    pass


def auth(x_token: str = Header()) -> str:
    if x_token != "secret":
        raise HTTPException(status_code=401, detail="bad token")
    return x_token


app = FastAPI()
router = APIRouter(prefix="/admin", tags=["admin"])


@app.exception_handler(Teapot)
async def teapot_handler(request: Request, exc: Teapot) -> JSONResponse:
    return JSONResponse({"teapot": str(exc)}, status_code=418)


@app.get("/health")
def health() -> str:
    return "ok"


@ingress(app)
class Service:
    def __init__(self, state: str) -> None:
        self.state = state
        self.created: list[str] = []

    @app.get("/items/{item_id}", tags=["items"])
    def get_item(self, item_id: int, q: str | None = None) -> dict[str, Any]:
        """Read one item."""
        return {"state": self.state, "item_id": item_id, "q": q}

    @app.post("/items", status_code=201)
    async def create(self, item: Item) -> dict[str, Any]:
        self.created.append(item.name)
        return {"state": self.state, "name": item.name, "price": item.price}

    @app.get("/filtered", response_model=ItemOut)
    def filtered(self) -> dict[str, Any]:
        return {"name": "kept", "secret": "dropped"}

    @app.get("/teapot")
    def teapot(self) -> None:
        raise Teapot(self.state)

    @app.get("/whoami")
    def whoami(self, token: str = Depends(auth)) -> dict[str, str]:
        return {"state": self.state, "token": token}

    @app.get("/url")
    def url(self, request: Request) -> dict[str, str]:
        return {"url": str(request.url), "base": str(request.base_url)}

    @app.get("/stream")
    def stream(self) -> StreamingResponse:
        async def chunks() -> AsyncIterator[str]:
            for i in range(3):
                await asyncio.sleep(0)
                yield f"{self.state}-{i};"

        return StreamingResponse(chunks(), media_type="text/plain")

    @staticmethod
    @app.get("/static")
    def static_route(x: int = 1) -> int:
        return x + 1

    @router.get("/stats")
    async def stats(self) -> dict[str, Any]:
        return {"state": self.state, "created": self.created}


app.include_router(router)


@pytest.fixture(scope="module")
def service() -> IngressApp:
    return build(Service("s1"))


def test_marks_the_class_in_place() -> None:
    assert is_ingress_class(Service)
    assert not is_ingress_class(Item)
    assert pickle.loads(pickle.dumps(Service)) is Service
    # The user's functions keep their own signature.
    assert list(inspect.signature(Service.get_item).parameters) == ["self", "item_id", "q"]


def test_method_route_sees_self_path_and_query(service: IngressApp) -> None:
    reply = request(service, "GET", "/items/7", query="q=hi")
    assert reply.status == 200
    assert reply.json() == {"state": "s1", "item_id": 7, "q": "hi"}
    assert request(service, "GET", "/items/notanint").status == 422


def test_post_pydantic_body_and_status_code(service: IngressApp) -> None:
    reply = request(service, "POST", "/items", body={"name": "pen", "price": 1.5})
    assert reply.status == 201
    assert reply.json() == {"state": "s1", "name": "pen", "price": 1.5}
    bad = request(service, "POST", "/items", body={"name": "pen"})
    assert bad.status == 422
    assert bad.json()["detail"][0]["loc"] == ["body", "price"]


def test_response_model_filters(service: IngressApp) -> None:
    assert request(service, "GET", "/filtered").json() == {"name": "kept"}


def test_exception_handler_of_the_app(service: IngressApp) -> None:
    reply = request(service, "GET", "/teapot")
    assert (reply.status, reply.json()) == (418, {"teapot": "s1"})


def test_depends_alongside_self(service: IngressApp) -> None:
    ok = request(service, "GET", "/whoami", headers={"x-token": "secret"})
    assert ok.json() == {"state": "s1", "token": "secret"}
    assert request(service, "GET", "/whoami", headers={"x-token": "no"}).status == 401
    assert request(service, "GET", "/whoami").status == 422


def test_included_router_route_and_plain_function_route(service: IngressApp) -> None:
    request(service, "POST", "/items", body={"name": "cup", "price": 2})
    stats = request(service, "GET", "/admin/stats").json()
    assert stats["state"] == "s1" and "cup" in stats["created"]
    assert request(service, "GET", "/health").json() == "ok"
    assert request(service, "GET", "/static", query="x=2").json() == 3
    assert request(service, "GET", "/nope").status == 404


def test_openapi_hides_self_and_keeps_metadata(service: IngressApp) -> None:
    schema = request(service, "GET", "/openapi.json").json()
    get_item = schema["paths"]["/items/{item_id}"]["get"]
    assert [p["name"] for p in get_item["parameters"]] == ["item_id", "q"]
    assert get_item["tags"] == ["items"]
    assert get_item["description"] == "Read one item."
    assert schema["paths"]["/admin/stats"]["get"]["tags"] == ["admin"]
    assert "parameters" not in schema["paths"]["/filtered"]["get"]


def test_mounted_under_root_path(service: IngressApp) -> None:
    reply = request(service, "GET", "/api/items/3", root_path="/api")
    assert reply.json() == {"state": "s1", "item_id": 3, "q": None}
    urls = request(service, "GET", "/api/url", root_path="/api", query="a=1").json()
    assert urls == {"url": "http://testserver/api/url?a=1", "base": "http://testserver/api/"}
    assert request(service, "GET", "/api/admin/stats", root_path="/api").status == 200


@pytest.mark.parametrize("spec_version", ["2.3", "2.4"])
def test_streaming_response_is_not_cut_short(service: IngressApp, spec_version: str) -> None:
    reply = request(service, "GET", "/stream", spec_version=spec_version)
    assert reply.status == 200
    assert reply.body == b"s1-0;s1-1;s1-2;"
    assert len([c for c in reply.chunks if c]) == 3


def test_two_instances_get_their_own_self(service: IngressApp) -> None:
    other = build(Service("s2"))
    assert request(other, "GET", "/items/1").json()["state"] == "s2"
    assert request(service, "GET", "/items/1").json()["state"] == "s1"
    assert request(other, "GET", "/admin/stats").json()["state"] == "s2"


def test_rebinding_is_idempotent(service: IngressApp) -> None:
    routes_before = list(app.router.routes)
    build(Service("s3"))
    assert app.router.routes == routes_before


MAIN_SCRIPT = """
    from __future__ import annotations

    import sys

    import cloudpickle
    from fastapi import Depends, FastAPI
    from pydantic import BaseModel

    from schooner.ingress import ingress

    app = FastAPI()
    app.state.greeting = "hello"


    class In(BaseModel):
        x: int


    def offset(plus: int = 0) -> int:
        return plus


    @ingress(app)
    class Main:
        def __init__(self, k: int) -> None:
            self.k = k

        @app.post("/mul")
        def mul(self, body: In, extra: int = Depends(offset)) -> dict[str, int]:
            return {"y": body.x * self.k + extra}


    sys.stdout.buffer.write(cloudpickle.dumps(Main))
"""


def test_class_from_main_pickled_by_value_carries_a_working_app(tmp_path: Path) -> None:
    """String annotations resolve and ``app.state`` unpickles in a process without ``__main__``."""
    script = tmp_path / "service_main.py"
    script.write_text(textwrap.dedent(MAIN_SCRIPT))
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, timeout=60, check=True
    )
    copy = pickle.loads(done.stdout)
    assert copy.__module__ == "__main__" and copy.__qualname__ == "Main"
    served = build(copy(3))
    reply = request(served, "POST", "/mul", body={"x": 5}, query="plus=1")
    assert (reply.status, reply.json()) == (200, {"y": 16})
    assert request(served, "POST", "/mul", body={"x": "no"}).status == 422


# -- other shapes of app ------------------------------------------------------


def test_class_with_call_is_refused() -> None:
    with pytest.raises(ValueError, match="__call__"):

        @ingress(FastAPI())
        class Callable_:
            def __call__(self) -> None: ...


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(TypeError, match="ASGI app"):
        ingress(42)
    with pytest.raises(TypeError, match="ASGI app"):
        ingress(lambda one_arg: one_arg)
    with pytest.raises(ValueError, match="class"):
        ingress(FastAPI())(len)  # type: ignore[type-var]


def test_without_an_app_the_class_must_build_one() -> None:
    class Plain:
        pass

    with pytest.raises(ValueError, match="__serve_build_asgi_app__"):
        ingress()(Plain)


def test_without_a_class_a_default_one_keeps_its_arguments() -> None:
    app = FastAPI()
    cls = ingress(app)()
    assert cls.__name__ == "ASGIIngressDeployment" and is_ingress_class(cls)
    instance = cls(1, key="v")
    assert (instance.args, instance.kwargs) == ((1,), {"key": "v"})
    # Each call makes its own class, so two apps never share one.
    assert ingress(FastAPI())() is not cls


def test_builder_function() -> None:
    calls: list[int] = []

    def make_app() -> FastAPI:
        calls.append(1)
        built = FastAPI()

        @built.get("/hi")
        def hi() -> str:
            return "hi"

        return built

    @ingress(make_app)
    class Built:
        pass

    assert calls == []  # called in the replica, not at decoration time
    served = build(Built())
    assert calls == [1]
    assert request(served, "GET", "/hi").json() == "hi"


def test_starlette_app_and_raw_asgi_function() -> None:
    async def hello(request: Request) -> PlainTextResponse:
        return PlainTextResponse(f"hello {request.url.path}")

    star = Starlette(routes=[Route("/hello", hello)])

    @ingress(star)
    class WithStarlette:
        pass

    assert request(build(WithStarlette()), "GET", "/hello").body == b"hello /hello"

    async def raw(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    @ingress(raw)
    class WithRaw:
        pass

    assert request(build(WithRaw()), "GET", "/").status == 204


def test_app_returning_without_a_response_raises() -> None:
    async def silent(scope: Any, receive: Any, send: Any) -> None:
        return None

    @ingress(silent)
    class Silent:
        pass

    with pytest.raises(RuntimeError, match="without completing"):
        request(build(Silent()), "GET", "/")


def test_app_shared_by_two_classes_routes_stay_with_their_class() -> None:
    shared = FastAPI()

    @ingress(shared)
    class First:
        @shared.get("/first")
        def first(self) -> str:
            return "first"

    @ingress(shared)
    class Second:
        @shared.get("/second")
        def second(self) -> str:
            return "second"

    one, two = build(First()), build(Second())
    assert request(one, "GET", "/first").json() == "first"
    assert request(two, "GET", "/second").json() == "second"
    assert request(two, "GET", "/first").status == 404


def test_websocket_method_route() -> None:
    ws_app = FastAPI()

    @ingress(ws_app)
    class Echo:
        def __init__(self) -> None:
            self.prefix = "echo:"

        @ws_app.websocket("/ws")
        async def ws(self, websocket: WebSocket) -> None:
            await websocket.accept()
            text = await websocket.receive_text()
            await websocket.send_text(self.prefix + text)
            await websocket.close()

    served = build(Echo())
    sent: list[dict[str, Any]] = []

    async def session() -> None:
        inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        for message in ({"type": "websocket.connect"}, {"type": "websocket.receive", "text": "hi"}):
            inbox.put_nowait(message)

        async def send(message: Any) -> None:
            sent.append(dict(message))

        scope = {
            "type": "websocket",
            "path": "/ws",
            "root_path": "",
            "query_string": b"",
            "headers": [(b"host", b"t")],
            "subprotocols": [],
        }
        await served(scope, inbox.get, send)

    asyncio.run(session())
    assert [m["type"] for m in sent] == ["websocket.accept", "websocket.send", "websocket.close"]
    assert sent[1]["text"] == "echo:hi"


def test_inherited_methods_are_bound() -> None:
    base_app = FastAPI()

    class Base:
        name = "base"

        @base_app.get("/name")
        def get_name(self) -> str:
            return self.name

    @ingress(base_app)
    class Child(Base):
        name = "child"

    assert request(build(Child()), "GET", "/name").json() == "child"


# -- lifespan -------------------------------------------------------------------


def run_lifespan(target: IngressApp, then: Callable[[], Awaitable[None]] | None = None) -> None:
    async def scenario() -> None:
        shutdown = await start_lifespan(target)
        if then is not None:
            await then()
        await shutdown()

    asyncio.run(scenario())


def test_lifespan_startup_state_and_shutdown() -> None:
    events: list[str] = []

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[dict[str, Any]]:
        events.append("startup")
        yield {"model": "loaded"}
        events.append("shutdown")

    life_app = FastAPI(lifespan=lifespan)

    @ingress(life_app)
    class Life:
        @life_app.get("/model")
        def model(self, request: Request) -> str:
            return str(request.state.model)

    served = build(Life())
    seen: list[Any] = []

    async def during() -> None:
        assert events == ["startup"]
        messages: list[dict[str, Any]] = []

        async def send(message: dict[str, Any]) -> None:
            messages.append(message)

        scope = {
            "type": "http",
            "method": "GET",
            "path": "/model",
            "root_path": "",
            "query_string": b"",
            "headers": [(b"host", b"t")],
        }
        await call_asgi(served, scope, b"", send)
        seen.append(Reply(messages).json())

    run_lifespan(served, during)
    assert seen == ["loaded"]
    assert events == ["startup", "shutdown"]


def test_lifespan_failure_raises_with_the_apps_message() -> None:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        raise OSError("model file missing")
        yield

    @ingress(FastAPI(lifespan=lifespan))
    class Broken:
        pass

    with pytest.raises(RuntimeError, match="model file missing"):
        run_lifespan(build(Broken()))


def test_app_without_lifespan_support_is_fine() -> None:
    async def http_only(scope: Any, receive: Any, send: Any) -> None:
        assert scope["type"] == "http", "unsupported scope"

    @ingress(http_only)
    class HttpOnly:
        pass

    run_lifespan(build(HttpOnly()))
