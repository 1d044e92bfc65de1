"""Starting an instance from a driver (``serve.run``, ``schooner run``, ``schooner start``).

What is started is the instance's supervisor (:mod:`schooner.runtime.supervisor`),
which binds the ports and starts the head. It runs in its own session (so
Ctrl-C in the terminal reaches only the driver, which then shuts the
instance down in order) and, unless detached, is tied to the driver by a
lifeline: if the driver dies, even by SIGKILL, everything exits.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

from schooner.exceptions import RayServeException
from schooner.runtime.lifeline import Lifeline
from schooner.runtime.resources import check_num_gpus
from schooner.runtime.session import Session
from schooner.runtime.supervisor import HEAD_START_TIMEOUT_S, read_line


@dataclass
class HeadHandle:
    """A started instance: ``process`` is its supervisor (the process to wait for)."""

    process: subprocess.Popen[bytes]
    session: Session
    lifeline: Lifeline | None
    http_host: str
    http_port: int
    admin_url: str | None = None
    http_scheme: str = "http"

    def wait(self, timeout_s: float) -> bool:
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            return False
        return True

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def release(self) -> None:
        if self.lifeline is not None:
            self.lifeline.close()
            self.lifeline = None


@dataclass
class PendingHead:
    """A head process that was started and has not yet said it is ready."""

    process: subprocess.Popen[bytes]
    session: Session
    lifeline: Lifeline | None
    http_host: str
    ready_fd: int
    http_scheme: str = "http"

    def abandon(self) -> None:
        """Stop the head without waiting for it to be ready (the caller gave up)."""
        os.close(self.ready_fd)
        self._stop()

    def _stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        if self.lifeline is not None:
            self.lifeline.close()

    def wait_ready(self) -> HeadHandle:
        """Wait until the head serves; raise with its reason if it failed."""
        process, session, lifeline = self.process, self.session, self.lifeline
        line = read_line(self.ready_fd, HEAD_START_TIMEOUT_S)
        os.close(self.ready_fd)
        if not line.startswith("READY"):
            self._stop()
            reason = (
                line[len("ERROR ") :]
                if line.startswith("ERROR ")
                else (
                    f"the head process exited (code {process.returncode}) before it was ready; "
                    f"see {session.logs / 'controller.log'}"
                )
            )
            raise RayServeException(
                f"Could not start Schooner: {reason.replace(chr(92) + 'n', chr(10))}"
            )
        fields = line.split()
        admin_url = fields[2] if len(fields) > 2 and fields[2] != "-" else None
        return HeadHandle(
            process,
            session,
            lifeline,
            self.http_host,
            int(fields[1]),
            admin_url,
            self.http_scheme,
        )


def launch_head(
    *,
    http_host: str = "127.0.0.1",
    http_port: int = 8000,
    root_path: str = "",
    detached: bool = False,
    num_cpus: float | None = None,
    num_gpus: float | None = None,
    resources: dict[str, float] | None = None,
    admin_host: str = "127.0.0.1",
    admin_port: int | None = None,
    metrics_port: int | None = None,
    proxy_location: str = "EveryNode",
    http_options: dict[str, Any] | None = None,
    grpc_options: dict[str, Any] | None = None,
    check_grpc: bool = True,
    probe_port: int | None = None,
    checkpoint_path: str | None = None,
    env: dict[str, str] | None = None,
    extra_args: list[str] | None = None,
    output_to_log: bool = False,
) -> PendingHead:
    """Start a head process without waiting for it (see :meth:`PendingHead.wait_ready`).

    ``detached``: the head outlives this process (no lifeline; its output goes
    to ``logs/head.out`` in the session, as with ``output_to_log``). ``admin_port``: serve
    the admin REST API there (``None``: no admin API; ``0``: any free port); the admin
    API serves ``/metrics`` too. ``metrics_port``: also serve ``/metrics`` alone there.
    ``checkpoint_path``: the checkpoint store's URI (default: a directory in the
    session). ``env``: extra environment of the instance's processes (head, proxy,
    replicas).

    HTTPS (``http_options``' ``ssl_*``): the files are checked first (ServeConfigError
    naming the field, the file and the cause); ``ssl_keyfile_password`` goes to the head
    in its environment, not on its command line. gRPC (``grpc_options`` with servicer
    functions): unless ``check_grpc`` is False (a head on a Ray cluster, whose proxies run
    on other nodes), the functions are imported and the port is checked first
    (ServeConfigError naming the entry, or the port in use).
    """
    grpc_options = dict(grpc_options or {})
    servicers = grpc_options.get("grpc_servicer_functions")
    if check_grpc and servicers and proxy_location != "Disabled":
        from schooner.grpc_servicers import check_grpc_port, load_servicer_functions

        load_servicer_functions(servicers)
        check_grpc_port(http_host, int(grpc_options.get("port", 9000)))
    http_options = dict(http_options or {})
    scheme = "http"
    if http_options.get("ssl_certfile") or http_options.get("ssl_keyfile"):
        from schooner import tls  # ssl is imported only for HTTPS

        # Checked here, before anything starts, so a bad file fails where the user started
        # the instance; the head and the proxy check again.
        http_options = tls.absolute_tls_paths(http_options)
        tls.ssl_context_for(http_options)
        scheme = "https"
    password = http_options.pop("ssl_keyfile_password", None)
    # The head inherits this environment; a --num-gpus it cannot honour fails here already.
    check_num_gpus(num_gpus, os.environ.get("CUDA_VISIBLE_DEVICES"))
    session = Session.create()
    ready_r, ready_w = os.pipe()
    lifeline = None if detached else Lifeline()
    head_args = [
        "--session",
        str(session.root),
        "--http-host",
        http_host,
        "--http-port",
        str(http_port),
        "--root-path",
        root_path,
        "--resources",
        json.dumps(resources or {}),
        "--proxy-location",
        proxy_location,
        "--http-options",
        json.dumps(http_options),
        "--grpc-options",
        json.dumps(grpc_options or {"port": 9000, "grpc_servicer_functions": []}),
        "--admin-host",
        admin_host,
        "--admin-port",
        str(-1 if admin_port is None else admin_port),
        "--probe-port",
        str(-1 if probe_port is None else probe_port),
    ]
    if detached:
        head_args.append("--detached")
    if num_cpus is not None:
        head_args += ["--num-cpus", str(num_cpus)]
    if num_gpus is not None:
        head_args += ["--num-gpus", str(num_gpus)]
    if checkpoint_path is not None:
        head_args += ["--checkpoint-path", checkpoint_path]
    if metrics_port is not None:
        head_args += ["--metrics-port", str(metrics_port)]
    head_args += extra_args or []
    args = [sys.executable, "-m", "schooner.runtime.supervisor", "--ready-fd", str(ready_w)]
    pass_fds = [ready_w]
    if lifeline is not None:
        args += ["--lifeline-fd", str(lifeline.read_fd)]
        pass_fds.append(lifeline.read_fd)
    args += ["--", *head_args]
    env = {**os.environ, **(env or {})}
    env["SCHOONER_SYS_PATH"] = os.pathsep.join(p for p in sys.path if p)
    if scheme == "https":
        env.pop(tls.PASSWORD_ENV, None)
        if password:
            env[tls.PASSWORD_ENV] = str(password)
    to_log = detached or output_to_log
    output = open(session.logs / "head.out", "ab") if to_log else None  # noqa: SIM115
    try:
        process = subprocess.Popen(
            args,
            pass_fds=pass_fds,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=output,
            start_new_session=True,
            env=env,
        )
    finally:
        if output is not None:
            output.close()
    os.close(ready_w)
    if lifeline is not None:
        lifeline.close_read_end()
    return PendingHead(process, session, lifeline, http_host, ready_r, scheme)
