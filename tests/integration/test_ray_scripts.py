"""Single-file Ray Serve programs run as written, with their deployments in ``__main__``.

Each test writes a small program the way Ray Serve's documentation writes
them (``import schooner as serve`` in place of ``from ray import serve``),
runs it as a script in its own interpreter on a free port, and checks what
it prints. Code in ``__main__`` travels to the replicas by value, so these
are the cases where what the script's classes refer to must survive pickling.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from helpers import free_port, wait_until_no_processes

_PRELUDE = """\
import sys
import httpx
import schooner as serve

PORT = int(sys.argv[1])
serve.start(http_options={"host": "127.0.0.1", "port": PORT})
http = httpx.Client(base_url=f"http://127.0.0.1:{PORT}", timeout=30)
"""


def _run_script(tmp_path: Path, body: str) -> list[str]:
    """Run ``body`` as ``__main__`` after the prelude; return its stdout lines."""
    script = tmp_path / "program.py"
    script.write_text(_PRELUDE + textwrap.dedent(body) + "\nserve.shutdown()\n")
    done = subprocess.run(
        [sys.executable, str(script), str(free_port())],
        cwd=tmp_path,
        env={**os.environ, "TMPDIR": str(tmp_path)},  # its session, to check for leftovers
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert done.returncode == 0, f"program failed:\n{done.stdout}\n{done.stderr}"
    assert not wait_until_no_processes(10.0, tmp_path), "the program left processes"
    return done.stdout.splitlines()


def test_methods_that_use_the_serve_module_deploy_from_main(tmp_path: Path) -> None:
    out = _run_script(
        tmp_path,
        """
        @serve.deployment
        class Model:
            def __call__(self, request):
                ctx = serve.get_replica_context()
                return {"app": ctx.app_name, "deployment": ctx.deployment,
                        "model_id": serve.get_multiplexed_model_id()}

            @serve.batch(max_batch_size=4, batch_wait_timeout_s=0.01)
            async def double(self, xs):
                return [2 * x for x in xs]

        handle = serve.run(Model.bind(), name="scripted")
        print(http.get("/").json())
        print(handle.double.remote(21).result())
        print(isinstance(handle, serve.handle.DeploymentHandle))
        """,
    )
    assert out == [
        "{'app': 'scripted', 'deployment': 'Model', 'model_id': ''}",
        "42",
        "True",
    ]


def test_the_same_deployment_bound_twice_is_two_deployments(tmp_path: Path) -> None:
    out = _run_script(
        tmp_path,
        """
        @serve.deployment
        class Adder:
            def __init__(self, increment):
                self.increment = increment

            def add(self, x):
                return x + self.increment

        @serve.deployment
        class Combiner:
            def __init__(self, first, second):
                self.first, self.second = first, second

            async def __call__(self, request):
                x = int(request.query_params["x"])
                return [await self.first.add.remote(x), await self.second.add.remote(x)]

        serve.run(Combiner.bind(Adder.bind(1), Adder.bind(100)))
        print(http.get("/", params={"x": 5}).json())
        app = serve.status().applications["default"]
        print(sorted(app.deployments))
        """,
    )
    assert out == ["[6, 105]", "['Adder', 'Adder_1', 'Combiner']"]


def test_http_handlers_without_parameters_are_called_without_the_request(
    tmp_path: Path,
) -> None:
    out = _run_script(
        tmp_path,
        """
        @serve.deployment
        def ping():
            return "pong"

        @serve.deployment
        class Hello:
            async def __call__(self) -> str:
                return "Hello, world!"

        serve.run(ping.bind(), name="ping", route_prefix="/ping")
        serve.run(Hello.bind(), name="hello", route_prefix="/hello")
        print(http.get("/ping").text)
        print(http.get("/hello").text)
        """,
    )
    assert out == ["pong", "Hello, world!"]


def test_an_ingress_without_a_class_or_built_by_the_instance(tmp_path: Path) -> None:
    out = _run_script(
        tmp_path,
        """
        from fastapi import FastAPI

        def make_app():
            app = FastAPI()

            @app.get("/")
            def root():
                return {"built": "in the replica"}

            return app

        # serve.ingress(...)() makes the class; a builder runs in the replica.
        serve.run(serve.deployment(serve.ingress(make_app)()).bind(), route_prefix="/a", name="a")
        print(http.get("/a").json())

        @serve.deployment
        @serve.ingress()
        class Greeter:
            def __init__(self, greeting):
                self.greeting = greeting

            def __serve_build_asgi_app__(self):
                app = FastAPI()

                @app.get("/")
                def root():
                    return self.greeting

                return app

        serve.run(Greeter.bind("hi there"), route_prefix="/b", name="b")
        print(http.get("/b").json())
        """,
    )
    assert out == ["{'built': 'in the replica'}", "hi there"]


def test_starlette_submodules_resolve_after_a_bare_import(tmp_path: Path) -> None:
    out = _run_script(
        tmp_path,
        """
        import starlette

        @serve.deployment
        class Echo:
            async def __call__(self, request: starlette.requests.Request):
                return starlette.responses.PlainTextResponse(request.query_params["q"])

        serve.run(Echo.bind())
        print(http.get("/", params={"q": "annotated"}).text)
        """,
    )
    assert out == ["annotated"]


def test_http_answers_with_the_new_arguments_as_soon_as_serve_run_returns(
    tmp_path: Path,
) -> None:
    # Redeploying the same class with other constructor arguments replaces its replica;
    # the very next request must not reach the old one while it drains.
    out = _run_script(
        tmp_path,
        """
        @serve.deployment
        class Say:
            def __init__(self, word):
                self.word = word

            def __call__(self, request):
                return self.word

        for word in ["one", "two", "three"]:
            serve.run(Say.bind(word))
            print(http.get("/").text)
        """,
    )
    assert out == ["one", "two", "three"]


def test_a_sync_constructor_runs_on_the_replica_event_loop(tmp_path: Path) -> None:
    # Constructors start background tasks and tune the loop's default executor.
    out = _run_script(
        tmp_path,
        """
        import asyncio
        import threading
        from concurrent.futures import ThreadPoolExecutor

        @serve.deployment
        class Ticker:
            def __init__(self):
                self.ticks = 0
                loop = asyncio.get_running_loop()
                loop.set_default_executor(ThreadPoolExecutor(2, thread_name_prefix="mine"))
                self.task = loop.create_task(self.tick())

            async def tick(self):
                while True:
                    self.ticks += 1
                    await asyncio.sleep(0.01)

            async def __call__(self):
                while self.ticks < 3:
                    await asyncio.sleep(0.01)
                name = await asyncio.to_thread(lambda: threading.current_thread().name)
                return name.startswith("mine")

        print(serve.run(Ticker.bind()).remote().result())
        """,
    )
    assert out == ["True"]
