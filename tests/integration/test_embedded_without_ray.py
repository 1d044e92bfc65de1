"""The embedded runtime never imports Ray, even when Ray is installed (issue 11), nor grpc
when no gRPC servicers are configured.

A fresh interpreter runs a small application the usual way and reports what it
imported; the replica reports its own ``sys.modules`` too. Ray is installed in
the test environment (the ``test`` extra brings it), so this catches an import
that would slow down or break the default path.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from helpers import free_port

SCRIPT = textwrap.dedent(
    """
    import json, sys, urllib.request
    import schooner as serve

    @serve.deployment
    class Probe:
        def __call__(self, request) -> dict:
            return {
                "ray_in_replica": "ray" in sys.modules,
                "grpc_in_replica": "grpc" in sys.modules,
            }

    port = int(sys.argv[1])
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(Probe.bind(), name="probe", route_prefix="/probe")
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/probe", timeout=30) as resp:
        answer = json.load(resp)
    serve.status()
    serve.delete("probe")
    serve.shutdown()
    ray_modules = sorted(m for m in sys.modules if m == "ray" or m.startswith("ray."))
    grpc_modules = sorted(m for m in sys.modules if m == "grpc" or m.startswith("grpc."))
    print(json.dumps({**answer, "ray_in_driver": ray_modules, "grpc_in_driver": grpc_modules}))
    """
)


def test_serve_run_on_the_embedded_runtime_imports_no_ray(tmp_path) -> None:
    script = tmp_path / "probe_app.py"
    script.write_text(SCRIPT)
    proc = subprocess.run(
        [sys.executable, str(script), str(free_port())],
        capture_output=True,
        text=True,
        timeout=90,
        stdin=subprocess.DEVNULL,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report == {
        "ray_in_replica": False,
        "ray_in_driver": [],
        "grpc_in_replica": False,
        "grpc_in_driver": [],
    }
