"""What a small sequential RPC call costs over a Unix socket, TCP, and TCP with TLS.

The server runs in its own process (uvloop when installed, as Schooner does);
the client makes ``--calls`` sequential calls of a handler that returns at once
and prints the time per call, the best of ``--rounds``. Run with
``python -m bench.rpc_transport``.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import ssl
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from schooner.rpc.connection import serve_unix
from schooner.rpc.transport import connect, format_tcp_address, serve_tcp
from schooner.runtime.loop import new_event_loop

SECRET = b"b" * 32


class Handler:
    def rpc_add(self, a: int, b: int) -> int:
        return a + b


def _make_certs(directory: Path) -> None:
    sys.path.insert(0, str(Path(__file__).parent.parent / "tests" / "integration"))
    from tls_certs import make_certs

    make_certs(directory)


def _serve(kind: str, directory: str, ready: Any) -> None:
    async def main() -> None:
        if kind == "unix":
            path = f"{directory}/bench.sock"
            server = await serve_unix(path, Handler)
            ready.send(path)
        else:
            ctx = None
            if kind == "tls":
                ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
                ctx.load_cert_chain(f"{directory}/cert.pem", f"{directory}/key.pem")
            server = await serve_tcp("127.0.0.1", 0, Handler, secret=SECRET, ssl=ctx)
            ready.send(format_tcp_address("127.0.0.1", server.sockets[0].getsockname()[1]))
        async with server:
            await asyncio.Event().wait()

    new_event_loop().run_until_complete(main())


async def _measure(address: str, calls: int, ctx: ssl.SSLContext | None) -> float:
    conn = await connect(address, secret=SECRET, ssl=ctx)
    for _ in range(1000):  # warm up
        await conn.call("add", 1, 2)
    started = time.perf_counter()
    for _ in range(calls):
        await conn.call("add", 1, 2)
    elapsed = time.perf_counter() - started
    conn.close()
    return elapsed / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    spawn = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory() as directory:
        _make_certs(Path(directory))
        results: dict[str, float] = {}
        for kind in ("unix", "tcp", "tls"):
            receive, send = spawn.Pipe(duplex=False)
            server = spawn.Process(target=_serve, args=(kind, directory, send), daemon=True)
            server.start()
            address = receive.recv()
            ctx = None
            if kind == "tls":
                ctx = ssl.create_default_context(cafile=f"{directory}/ca.pem")
            loop = new_event_loop()
            per_call = [
                loop.run_until_complete(_measure(address, args.calls, ctx))
                for _ in range(args.rounds)
            ]
            loop.close()
            server.terminate()
            server.join()
            results[kind] = min(per_call)
            print(
                f"{kind:5} {min(per_call) * 1e6:7.1f} us/call  (rounds: "
                + ", ".join(f"{t * 1e6:.1f}" for t in per_call)
                + ")"
            )
        print(
            f"tcp/unix {results['tcp'] / results['unix']:.2f}x, "
            f"tls/unix {results['tls'] / results['unix']:.2f}x"
        )


if __name__ == "__main__":
    main()
