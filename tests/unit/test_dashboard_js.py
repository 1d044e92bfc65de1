"""The dashboard's pure JS functions (Prometheus text parser, rates), run with node.

Skipped when node is not installed; the browser tests (tests/integration/test_dashboard.py)
run the same code in Chromium.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

import schooner

SCRIPT = Path(schooner.__file__).parent / "admin" / "dashboard" / "dashboard.js"
NODE = shutil.which("node")

pytestmark = pytest.mark.skipif(
    NODE is None, reason="node is not installed (apt-get install nodejs)"
)


def js(expression: str) -> Any:
    """The JSON value of ``expression``, evaluated with the dashboard's exports as ``d``."""
    assert NODE is not None
    program = (
        f"const d = require({json.dumps(str(SCRIPT))}); console.log(JSON.stringify({expression}));"
    )
    out = subprocess.run([NODE, "-e", program], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


HTTP = 'application="shop",method="GET",route="/shop"'
CART = 'application="shop",deployment="Cart",replica="a",route="/shop"'
CART_B = CART.replace('replica="a"', 'replica="b"')
LATENCY = "ray_serve_deployment_processing_latency_ms"
TEXT = "\n".join(
    [
        "# HELP ray_serve_num_http_requests_total The number of HTTP requests processed.",
        "# TYPE ray_serve_num_http_requests_total counter",
        f'ray_serve_num_http_requests_total{{{HTTP},status_code="200"}} 90.0',
        f'ray_serve_num_http_requests_total{{{HTTP},status_code="500"}} 10 1700000000000',
        'ray_serve_num_http_requests_total{application="",route="/x",status_code="404"} 4',
        "",
        f'ray_serve_num_http_error_requests_total{{{HTTP},error_code="500"}} 10',
        f'{LATENCY}_bucket{{{CART},le="1.0"}} 50',
        f'{LATENCY}_bucket{{{CART},le="10.0"}} 90',
        f'{LATENCY}_bucket{{{CART},le="+Inf"}} 100',
        f"{LATENCY}_sum{{{CART}}} 400",
        f"{LATENCY}_count{{{CART}}} 100",
        f"ray_serve_deployment_request_counter_total{{{CART}}} 60",
        f"ray_serve_deployment_request_counter_total{{{CART_B}}} 40",
        r'odd_metric{msg="a \"quoted\", {braced} \\ line\nbreak"} +Inf',
        'broken{unterminated="x 1',
    ]
)


def test_parse_prometheus_text() -> None:
    samples = js(f"d.parsePrometheus({json.dumps(TEXT)})")
    assert len(samples) == 12  # comments, blank and malformed lines are skipped
    first = samples[0]
    assert first == {
        "name": "ray_serve_num_http_requests_total",
        "labels": {"application": "shop", "method": "GET", "route": "/shop", "status_code": "200"},
        "value": 90,
    }
    assert samples[1]["value"] == 10  # a timestamp after the value is ignored
    odd = js(f"d.parsePrometheus({json.dumps(TEXT)}).find(s => s.name === 'odd_metric')")
    assert odd["labels"] == {"msg": 'a "quoted", {braced} \\ line\nbreak'}
    assert js("d.parsePrometheus('x +Inf')[0].value === Infinity") is True


def test_summarize_sums_over_the_other_labels() -> None:
    summary = js(f"d.summarize(d.parsePrometheus({json.dumps(TEXT)}))")
    assert summary["app"] == {
        "shop": {"requests": 100, "errors": 10, "sum": 0, "count": 0, "buckets": {}}
    }  # the 404 without an application is nobody's
    cart = summary["deployment"][json.dumps(["shop", "Cart"], separators=(",", ":"))]
    assert cart["requests"] == 100 and cart["sum"] == 400 and cart["count"] == 100
    assert cart["buckets"] == {"1.0": 50, "10.0": 90, "+Inf": 100}


def test_rates_between_two_scrapes() -> None:
    later = (
        TEXT.replace("} 90.0", "} 130")
        .replace("} 10 17", "} 20 17")
        .replace('error_code="500"} 10', 'error_code="500"} 20')
    )
    got = js(
        f"d.rates(d.summarize(d.parsePrometheus({json.dumps(TEXT)})), "
        f"d.summarize(d.parsePrometheus({json.dumps(later)})), 2)"
    )
    shop = got["app"]["shop"]
    assert shop["rps"] == 25  # (50 more requests) / 2 s
    assert shop["errorsPerS"] == 5 and shop["errorRatio"] == 0.2
    assert shop["meanMs"] is None  # no latency samples in between
    cart = got["deployment"]['["shop","Cart"]']
    assert cart["rps"] == 0 and cart["p99Ms"] is None


def test_a_reset_counter_counts_from_zero() -> None:
    got = js(
        "d.rates({app: {a: {requests: 100, errors: 5, sum: 0, count: 0, buckets: {}}},"
        " deployment: {}}, {app: {a: {requests: 8, errors: 0, sum: 0, count: 0, buckets: {}}},"
        " deployment: {}}, 4)"
    )
    assert got["app"]["a"]["rps"] == 2 and got["app"]["a"]["errorsPerS"] == 0
    assert js("d.rates(null, {app: {}, deployment: {}}, 2)") == {"app": {}, "deployment": {}}


def test_latency_from_histogram_deltas() -> None:
    prev = "{requests: 0, errors: 0, sum: 100, count: 50, buckets: {'5': 40, '10': 50, '+Inf': 50}}"
    curr = (
        "{requests: 0, errors: 0, sum: 700, count: 150, buckets: {'5': 60, '10': 130, '+Inf': 150}}"
    )
    before, after = (f"{{app: {{}}, deployment: {{k: {t}}}}}" for t in (prev, curr))
    got = js(f"d.rates({before}, {after}, 1)")["deployment"]["k"]
    assert got["meanMs"] == 6  # 600 ms over 100 calls
    # 100 calls: 20 at <= 5 ms, 60 more at <= 10 ms, 20 above: the median is in (5, 10].
    assert math.isclose(got["p50Ms"], 5 + 5 * (50 - 20) / 60)
    assert got["p99Ms"] == 10  # in the +Inf bucket: the largest finite bound, as Prometheus


def test_quantile_edge_cases() -> None:
    assert js("d.quantile(0.5, [])") is None
    assert js("d.quantile(0.5, [[1, 0], [Infinity, 0]])") is None
    assert js("d.quantile(0.5, [[1, 10], [Infinity, 10]])") == 0.5


def test_formatting() -> None:
    assert js("[d.fmtNumber(null), d.fmtNumber(0), d.fmtNumber(3.14159), d.fmtNumber(42.42)]") == [
        "\N{EN DASH}",
        "0",
        "3.14",
        "42.4",
    ]
    assert js("[d.fmtMs(null), d.fmtMs(1.5)]") == ["\N{EN DASH}", "1.50 ms"]
    assert js("[5, 65, 3720, 90000].map(d.fmtDuration)") == ["5s", "1m 05s", "1h 02m", "1d 01h"]
    assert js("['RUNNING', 'DEPLOY_FAILED', 'UPDATING', 'DELETING'].map(d.statusClass)") == [
        "status ok",
        "status bad",
        "status busy",
        "status",
    ]


def test_traffic_notes_say_what_each_application_serves() -> None:
    apps = {
        "shop": {"traffic": {"split": {"shop": 0.9, "shop_v2": 0.1}, "shadows": {"probe": 0.25}}},
        "shop_v2": {"traffic": None},
        "probe": {},
        "other": {"traffic": {"split": {}, "shadows": {}}},
    }
    assert js(f"d.trafficNotes({json.dumps(apps)})") == {
        "shop": ["split: shop 90% \N{MIDDLE DOT} shop_v2 10%", "shadows: probe 25%"],
        "shop_v2": ["serves 10% of shop's requests"],
        "probe": ["shadow of shop: gets copies of 25% of its requests"],
    }
    assert js("[1/3, 0.125, NaN].map(d.fmtPercent)") == ["33.3%", "12.5%", "\N{EN DASH}"]
    assert js("d.trafficNotes(undefined)") == {}
    states = ["RUNNING", "PAUSED", "SUCCEEDED", "ROLLED_BACK", "ABORTED"]
    assert js(f"{json.dumps(states)}.map(d.rolloutClass)") == [
        "status busy",
        "status busy",
        "status ok",
        "status bad",
        "status",
    ]
