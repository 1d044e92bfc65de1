"""HTTPS on the proxy: real instances with a certificate made in the test, real requests
verified against its CA, and every way a bad certificate setting fails start-up."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
import websockets.sync.client
import yaml
from detached import Foreground, cli
from fastapi import FastAPI, WebSocket
from helpers import free_port, schooner_processes, wait_for, wait_until_no_processes
from starlette.requests import Request
from tls_certs import Certs, make_certs

import schooner as serve
from schooner import api, tls
from schooner.exceptions import RayServeException, ServeConfigError

APP = textwrap.dedent(
    """
    import os

    import schooner as serve

    @serve.deployment
    class Where:
        async def __call__(self, request):
            return {
                "scheme": request.url.scheme,
                "password_env": os.environ.get("SCHOONER_SSL_KEYFILE_PASSWORD"),
            }

    app = Where.bind()
    """
)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "where.py").write_text(APP)
    return tmp_path


def _client(certs: Certs, port: int) -> httpx.Client:
    """A client that trusts only the test CA (so a request proves the chain is served)."""
    verify = ssl.create_default_context(cafile=str(certs.ca))
    return httpx.Client(base_url=f"https://127.0.0.1:{port}", verify=verify, timeout=30)


def _tls_options(certs: Certs, **overrides: Any) -> dict[str, Any]:
    return {
        "ssl_certfile": str(certs.cert),
        "ssl_keyfile": str(certs.encrypted_key),
        "ssl_keyfile_password": certs.password,
        "ssl_ca_certs": str(certs.ca),
        **overrides,
    }


@serve.deployment
class Where:
    async def __call__(self, request: Request) -> dict[str, Any]:
        return {
            "scheme": request.url.scheme,
            "password_env": os.environ.get("SCHOONER_SSL_KEYFILE_PASSWORD"),
        }


wss_api = FastAPI()


@serve.deployment
@serve.ingress(wss_api)
class SecureEcho:
    @wss_api.websocket("/echo")
    async def echo(self, ws: WebSocket) -> None:
        await ws.accept()
        text = await ws.receive_text()
        await ws.send_text(f"{ws.url.scheme}:{text}")
        await ws.close(code=4001)


def test_websockets_are_served_over_tls(certs: Certs) -> None:
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port, **_tls_options(certs)})
    try:
        serve.run(SecureEcho.bind(), route_prefix="/secure")
        trusted = ssl.create_default_context(cafile=str(certs.ca))
        url = f"wss://127.0.0.1:{port}/secure/echo"
        with websockets.sync.client.connect(url, ssl=trusted, open_timeout=30) as ws:
            ws.send("hello")
            assert ws.recv(timeout=30) == "wss:hello"
            with pytest.raises(websockets.ConnectionClosed) as closed:
                ws.recv(timeout=30)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4001
    finally:
        serve.shutdown()


def test_serve_start_serves_https(certs: Certs) -> None:
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port, **_tls_options(certs)})
    try:
        serve.run(Where.bind(), route_prefix="/where")
        assert api.http_address() == f"https://127.0.0.1:{port}"
        with _client(certs, port) as client:
            assert client.get("/-/healthz").text == "success"
            assert client.get("/-/routes").json() == {"/where": "default"}
            # The application sees https; replicas do not inherit the key's password.
            assert client.get("/where").json() == {"scheme": "https", "password_env": None}
            missing = client.get("/elsewhere")
            assert missing.status_code == 404 and f"https://127.0.0.1:{port}/-/routes" in (
                missing.text
            )
        with pytest.raises(httpx.HTTPError):  # plain HTTP on the HTTPS port gets no answer
            httpx.get(f"http://127.0.0.1:{port}/-/healthz", timeout=10)
        # The password is on no command line, and the REST API does not hand it out.
        assert not [cmd for _, cmd in schooner_processes() if certs.password in cmd]
        shown = api._controller_call("details")["http_options"]
        assert shown["ssl_keyfile_password"] == "********"
        assert shown["ssl_certfile"] == str(certs.cert)
    finally:
        serve.shutdown()


@pytest.mark.parametrize(
    ("bad", "field", "cause"),
    [
        ({"ssl_certfile": "missing.pem"}, "ssl_certfile", "No such file or directory"),
        ({"ssl_keyfile_password": "wrong"}, "ssl_keyfile_password", "wrong password"),
        ({"ssl_keyfile_password": None}, "ssl_keyfile", "the key is encrypted"),
        ({"ssl_keyfile": "OTHER"}, "ssl_keyfile", "does not belong to the certificate"),
        ({"ssl_ca_certs": "KEY"}, "ssl_ca_certs", "no PEM certificate"),
    ],
)
def test_serve_start_refuses_bad_tls_options(
    certs: Certs, bad: dict[str, Any], field: str, cause: str
) -> None:
    named = {"OTHER": str(certs.other_key), "KEY": str(certs.key)}
    bad = {k: named.get(v, v) if isinstance(v, str) else v for k, v in bad.items()}
    options = {"port": free_port(), **_tls_options(certs, **bad)}
    with pytest.raises(ServeConfigError) as info:
        serve.start(http_options=options)
    text = str(info.value)
    assert f"http_options.{field}" in text and cause in text
    file_field = field if field in tls.TLS_FIELDS else "ssl_keyfile"  # the password's key
    assert repr(os.path.abspath(options[file_field])) in text
    assert not wait_until_no_processes(5.0)


def test_head_checks_tls_options_too(certs: Certs, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file that goes bad after the driver's check still fails start-up, in the head."""
    monkeypatch.setattr(tls, "ssl_context_for", lambda options: None)  # the driver's check only
    options = {"port": free_port(), **_tls_options(certs, ssl_keyfile=str(certs.other_key))}
    with pytest.raises(RayServeException) as info:
        serve.start(http_options=options)
    text = str(info.value)
    assert text.startswith("Could not start Schooner: Cannot serve HTTPS: ")
    assert f"http_options.ssl_keyfile ({str(certs.other_key)!r})" in text
    assert "does not belong to the certificate" in text
    assert not wait_until_no_processes(10.0)


def _config(certs: Certs, workdir: Path, port: int, **tls_options: Any) -> Path:
    """A config file with http_options for HTTPS (paths relative to ``workdir``)."""
    for name in ("cert", "encrypted_key", "ca", "other_key"):
        (workdir / getattr(certs, name).name).write_bytes(getattr(certs, name).read_bytes())
    config = {
        "http_options": {
            "host": "127.0.0.1",
            "port": port,
            "ssl_certfile": certs.cert.name,
            "ssl_keyfile": certs.encrypted_key.name,
            "ssl_keyfile_password": certs.password,
            **tls_options,
        },
        "applications": [{"name": "where", "route_prefix": "/where", "import_path": "where:app"}],
    }
    path = workdir / "https.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_schooner_run_config_with_https(certs: Certs, workdir: Path) -> None:
    port = free_port()
    _config(certs, workdir, port)
    run = Foreground(["https.yaml", "--admin-port", "-1"], workdir)
    try:
        run.wait_line(f"serving application 'where' at https://127.0.0.1:{port}/where")
        with _client(certs, port) as client:
            assert client.get("/where").json()["scheme"] == "https"
            assert client.get("/-/healthz").text == "success"
    finally:
        assert run.stop() == 0


def test_schooner_run_config_with_a_key_of_another_certificate(certs: Certs, workdir: Path) -> None:
    _config(certs, workdir, free_port(), ssl_keyfile=certs.other_key.name)
    proc = subprocess.run(
        [sys.executable, "-m", "schooner.cli.main", "run", "https.yaml", "--admin-port", "-1"],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    path = str(workdir / certs.other_key.name)
    assert f"Error: Cannot serve HTTPS: http_options.ssl_keyfile ({path!r})" in proc.stderr
    assert "does not belong to the certificate" in proc.stderr


def test_schooner_start_with_tls_flags_and_deploy_warns(certs: Certs, workdir: Path) -> None:
    http_port, admin_port = free_port(), free_port()
    admin = f"http://127.0.0.1:{admin_port}"
    out = cli(
        "start",
        "--http-port",
        str(http_port),
        "--admin-port",
        str(admin_port),
        "--ssl-certfile",
        str(certs.cert),
        "--ssl-keyfile",
        str(certs.encrypted_key),
        cwd=workdir,
        env={"SCHOONER_SSL_KEYFILE_PASSWORD": certs.password},  # kept off the command line
    )
    try:
        assert f"HTTP:      https://127.0.0.1:{http_port}" in out.stdout
        with _client(certs, http_port) as client:
            assert client.get("/-/healthz").status_code == 503  # no application yet
            # A config whose http_options differ deploys its applications, with a warning.
            _config(certs, workdir, http_port, ssl_certfile=None, ssl_keyfile=None)
            deployed = cli("deploy", "https.yaml", "-a", admin, cwd=workdir)
            assert "http_options ssl_keyfile, ssl_certfile differ" in deployed.stderr
            assert "take effect only when an instance starts" in deployed.stderr

            def answers() -> Any:
                return client.get("/where").json()

            assert wait_for(answers, message="the deployed app over HTTPS")["scheme"] == "https"
            assert client.get("/-/healthz").text == "success"
    finally:
        cli("shutdown", "-y", "-a", admin, cwd=workdir, check=False)
    assert not wait_until_no_processes(10.0)
