"""HTTP load: wrk when it is installed, otherwise a built-in asyncio generator.

Both keep ``connections`` keep-alive connections busy for ``duration_s``, one
request at a time on each (no pipelining), and report requests/s and latency
percentiles. wrk runs with one thread, leaving the other core of a 2-core
machine to the server; the built-in generator runs in this process.
"""

from __future__ import annotations

import asyncio
import random
import re
import shutil
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


@dataclass
class LoadResult:
    """What one load run measured. ``errors`` counts non-2xx answers and socket errors."""

    tool: str
    connections: int
    duration_s: float
    requests: int
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_body(port: int, expected: bytes, body: bytes | None = None, path: str = "/") -> None:
    """One request by hand before any load: the app must answer what it should."""
    method = "GET" if body is None else "POST"
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method=method)
    request.add_header("Content-Type", "application/octet-stream")
    with urllib.request.urlopen(request, timeout=30) as response:
        got = response.read()
    if got != expected:
        raise RuntimeError(f"expected {expected[:40]!r} ({len(expected)} B), got {got[:40]!r}")


def wrk_path() -> str | None:
    return shutil.which("wrk")


def _post_script(body_bytes: int, directory: Path) -> Path:
    script = directory / f"post_{body_bytes}.lua"
    script.write_text(
        'wrk.method = "POST"\n'
        f'wrk.body = string.rep("b", {body_bytes})\n'
        'wrk.headers["Content-Type"] = "application/octet-stream"\n'
    )
    return script


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if not match:
        raise ValueError(f"unexpected wrk latency {text!r}")
    return float(match.group(1)) * _UNITS_MS[match.group(2)]


def parse_wrk(output: str, connections: int, duration_s: float) -> LoadResult:
    """Read requests/s, p50, p99 and error counts from ``wrk --latency`` output."""
    percentiles = dict(re.findall(r"^\s+(\d+)%\s+(\S+)\s*$", output, re.M))
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    total = re.search(r"(\d+) requests in", output)
    if not (rps and total and "50" in percentiles and "99" in percentiles):
        raise ValueError(f"cannot parse wrk output:\n{output}")
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", output))
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    errors += int(non_2xx.group(1)) if non_2xx else 0
    return LoadResult(
        tool="wrk",
        connections=connections,
        duration_s=duration_s,
        requests=int(total.group(1)),
        requests_per_s=float(rps.group(1)),
        p50_ms=_ms(percentiles["50"]),
        p99_ms=_ms(percentiles["99"]),
        errors=errors,
    )


def run_wrk(url: str, connections: int, duration_s: float, body_bytes: int = 0) -> LoadResult:
    wrk = wrk_path()
    assert wrk is not None
    seconds = max(1, round(duration_s))
    argv = [wrk, "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s", "--latency"]
    with tempfile.TemporaryDirectory(prefix="bench-wrk-") as tmp:
        if body_bytes:
            argv += ["-s", str(_post_script(body_bytes, Path(tmp)))]
        done = subprocess.run(
            [*argv, url], capture_output=True, text=True, timeout=seconds + 60, check=False
        )
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    return parse_wrk(done.stdout, connections, seconds)


async def read_response(reader: asyncio.StreamReader) -> int:
    """Read one HTTP/1.1 response, its body sized by content-length or sent in chunks
    (Ray Serve's proxy chunks a plain string); returns its status code."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    chunked = False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
    if chunked:
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
            await reader.readexactly(size + 2)
        while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers, then the last CRLF
            pass
    elif length:
        await reader.readexactly(length)
    return int(head[9:12])


async def _connection(
    host: str, port: int, request: bytes | list[bytes], deadline: float, latencies: list[float]
) -> int:
    """One keep-alive connection sending ``request`` (or one drawn at random from a list
    each time) until ``deadline``; returns errors."""
    errors = 0
    pool = request if isinstance(request, list) else [request]
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            writer.write(pool[0] if len(pool) == 1 else random.choice(pool))
            if not 200 <= await read_response(reader) < 300:
                errors += 1
            latencies.append(time.perf_counter() - start)
    finally:
        writer.close()
    return errors


async def _builtin(
    host: str,
    port: int,
    path: str,
    connections: int,
    duration_s: float,
    body_bytes: int,
    pool: list[bytes] | None = None,
) -> LoadResult:
    method = "POST" if body_bytes else "GET"
    request: bytes | list[bytes] = (
        pool
        or (
            f"{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Content-Length: {body_bytes}\r\nContent-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + b"b" * body_bytes
    )
    latencies: list[float] = []
    start = time.perf_counter()
    deadline = start + duration_s
    outcomes = await asyncio.gather(
        *(_connection(host, port, request, deadline, latencies) for _ in range(connections)),
        return_exceptions=True,
    )
    elapsed = time.perf_counter() - start
    errors = sum(o if isinstance(o, int) else 1 for o in outcomes)
    latencies.sort()
    if not latencies:
        raise RuntimeError(f"no request completed: {outcomes!r}")
    return LoadResult(
        tool="builtin",
        connections=connections,
        duration_s=elapsed,
        requests=len(latencies),
        requests_per_s=len(latencies) / elapsed,
        p50_ms=1000 * latencies[len(latencies) // 2],
        p99_ms=1000 * latencies[int(0.99 * (len(latencies) - 1))],
        errors=errors,
    )


def run_builtin(
    port: int, connections: int, duration_s: float, body_bytes: int = 0, path: str = "/"
) -> LoadResult:
    coro = _builtin("127.0.0.1", port, path, connections, duration_s, body_bytes)
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def run_load(
    port: int,
    connections: int,
    duration_s: float,
    body_bytes: int = 0,
    tool: str = "auto",
    path: str = "/",
) -> LoadResult:
    """Load ``http://127.0.0.1:port/path`` with the chosen tool (``auto``: wrk if installed)."""
    if tool == "wrk" or (tool == "auto" and wrk_path()):
        return run_wrk(f"http://127.0.0.1:{port}{path}", connections, duration_s, body_bytes)
    return run_builtin(port, connections, duration_s, body_bytes, path)


def get_request(port: int, path: str = "/", headers: dict[str, str] | None = None) -> bytes:
    """A GET request's bytes, as :func:`run_pool` sends them."""
    lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{port}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _pool_script(pool: list[bytes], directory: Path) -> Path:
    """A wrk script sending a request drawn at random from ``pool`` each time (all made
    up front: one table lookup per request)."""
    script = directory / "pool.lua"
    entries = ",\n".join(
        '"' + r.decode().replace("\\", "\\\\").replace('"', '\\"').replace("\r\n", "\\r\\n") + '"'
        for r in pool
    )
    script.write_text(
        f"local pool = {{\n{entries}\n}}\nlocal n = #pool\n"
        "request = function() return pool[math.random(n)] end\n"
    )
    return script


def run_pool(
    port: int, connections: int, duration_s: float, pool: list[bytes], tool: str = "auto"
) -> LoadResult:
    """Load with requests drawn at random from ``pool`` (made with :func:`get_request`):
    wrk with a script if installed (``auto``), else the built-in generator."""
    if tool == "wrk" or (tool == "auto" and wrk_path()):
        wrk = wrk_path()
        assert wrk is not None
        seconds = max(1, round(duration_s))
        with tempfile.TemporaryDirectory(prefix="bench-wrk-") as tmp:
            argv = [wrk, "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s"]
            argv += ["--latency", "-s", str(_pool_script(pool, Path(tmp)))]
            done = subprocess.run(
                [*argv, f"http://127.0.0.1:{port}/"],
                capture_output=True,
                text=True,
                timeout=seconds + 60,
                check=False,
            )
        if done.returncode != 0:
            raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
        return parse_wrk(done.stdout, connections, seconds)
    coro = _builtin("127.0.0.1", port, "/", connections, duration_s, 0, pool)
    return asyncio.run(coro)
