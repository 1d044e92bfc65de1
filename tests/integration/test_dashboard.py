"""The web dashboard in a real headless browser (Debian's chromium, driven by selenium
through chromium-driver), looked at the way a person looks at it.

One detached instance (``schooner start``) serves an application of two deployments;
the page must show the application RUNNING, both deployments with their replica counts,
the controller and the proxy, and a line the replica logged once its logs are expanded.
The token sign-in and the live metrics are checked against the admin server alone, with
a fake backend and a ``/metrics`` whose counters grow by a known amount per scrape.
"""

from __future__ import annotations

import asyncio
import os
import re
import textwrap
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from detached import Detached

from schooner.admin.server import AdminServer, bind_admin_socket
from schooner.runtime.loop import new_event_loop

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WAIT_S = 30.0

if not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
    pytest.skip(
        f"needs Debian's chromium and chromium-driver ({CHROMIUM}, {CHROMEDRIVER}): "
        "apt-get install chromium chromium-driver",
        allow_module_level=True,
    )

from selenium import webdriver  # noqa: E402 - after the skip: only with a browser
from selenium.common.exceptions import StaleElementReferenceException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

APP = textwrap.dedent(
    """
    import logging

    import schooner as serve
    from starlette.requests import Request

    logger = logging.getLogger("ray.serve")


    @serve.deployment(num_replicas=1, max_ongoing_requests=7, user_config={"volume": 11})
    class Shouter:
        def reconfigure(self, config):
            self.volume = config["volume"]

        def shout(self, word: str) -> str:
            if word.startswith("marker-"):
                logger.info("DASHBOARD-LINE %s", word)
            return word.upper()


    @serve.deployment(num_replicas=2)
    class Greeter:
        def __init__(self, shouter):
            self.shouter = shouter

        async def __call__(self, request: Request) -> str:
            return await self.shouter.shout.remote(request.query_params.get("name", "you"))


    app = Greeter.bind(Shouter.bind())
    """
)


# -- browser ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium')}",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def wait_until(driver: WebDriver, what: str, check: Callable[[WebDriver], Any]) -> Any:
    """Poll the page with a deadline until ``check`` returns something truthy."""
    waiter = WebDriverWait(
        driver, WAIT_S, poll_frequency=0.1, ignored_exceptions=(StaleElementReferenceException,)
    )
    return waiter.until(check, message=f"the page never showed {what}")


def text_of(driver: WebDriver, css: str) -> str:
    found = driver.find_elements(By.CSS_SELECTOR, css)
    return found[0].text if found else ""


# -- a real instance -----------------------------------------------------------------
@pytest.fixture(scope="module")
def instance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Detached]:
    workdir = tmp_path_factory.mktemp("dash")
    (workdir / "dashapp.py").write_text(APP)
    inst = Detached(workdir)
    inst.start()
    try:
        inst.deploy(
            {"applications": [{"name": "dash", "route_prefix": "/", "import_path": "dashapp:app"}]}
        )
        inst.wait_running("dash")
        yield inst
    finally:
        inst.stop()


def test_page_shows_the_instance(
    instance: Detached, browser: WebDriver, tmp_path_factory: pytest.TempPathFactory
) -> None:
    marker = f"marker-{uuid.uuid4().hex[:12]}"
    for name in ("ada", marker, "grace"):
        response = instance.http.get("/", params={"name": name})
        assert response.status_code == 200, response.text
        assert response.text == name.upper()

    browser.get(instance.admin + "/#/serve")
    app = '[data-app="dash"]'
    wait_until(browser, "the application RUNNING", lambda d: "RUNNING" in text_of(d, app))
    card = text_of(browser, app)
    assert "dash" in card and "dashapp:app" in card

    def deployment_row(name: str) -> str:
        return text_of(browser, f'{app} tr[data-deployment="{name}"]')

    wait_until(browser, "Greeter's 2 replicas", lambda d: "2 RUNNING" in deployment_row("Greeter"))
    wait_until(browser, "Shouter's replica", lambda d: "1 RUNNING" in deployment_row("Shouter"))
    assert "HEALTHY" in deployment_row("Greeter") and "HEALTHY" in deployment_row("Shouter")
    # The controller and the proxy.
    assert "SERVE_CONTROLLER_ACTOR" in text_of(browser, "#controller")
    wait_until(browser, "a HEALTHY proxy", lambda d: "HEALTHY" in text_of(d, "#proxies"))
    # Live traffic: requests sent now show up as a rate between two scrapes of /metrics.
    wait_until(browser, "live metrics", lambda d: "live metrics" in text_of(d, "#metrics-state"))
    for i in range(20):
        assert instance.http.get("/", params={"name": f"n{i}"}).status_code == 200
    busy = re.compile(r"(?<![\d.])(?!0 req/s)[\d.]+ req/s")
    wait_until(
        browser, "the app's request rate", lambda d: busy.search(text_of(d, f"{app} > .metrics"))
    )
    wait_until(browser, "Greeter's request rate", lambda d: busy.search(deployment_row("Greeter")))

    # Options, then the replica's log lines, expanded by a click.
    shouter = f'{app} tr[data-deployment-detail="Shouter"]'
    browser.find_element(
        By.CSS_SELECTOR, f'{app} tr[data-deployment="Shouter"] button[data-toggle$=":options"]'
    ).click()
    wait_until(
        browser, "Shouter's options", lambda d: "max_ongoing_requests" in text_of(d, shouter)
    )
    options = text_of(browser, f"{shouter} dl.options")
    assert re.search(r"max_ongoing_requests\s+7", options) and '{"volume":11}' in options
    browser.find_element(By.CSS_SELECTOR, f"{shouter} tr[data-replica] button[data-toggle]").click()
    logs = f"{shouter} pre.logs"
    wait_until(browser, "the replica's log line", lambda d: marker in text_of(d, logs))
    assert f"DASHBOARD-LINE {marker}" in text_of(browser, logs)

    # The next refreshes keep the pane open.
    before = text_of(browser, "#updated")
    wait_until(browser, "a refresh", lambda d: text_of(d, "#updated") not in ("", before))
    assert marker in text_of(browser, logs)
    screenshot = os.environ.get("SCHOONER_DASHBOARD_SCREENSHOT")
    if screenshot:
        browser.save_screenshot(screenshot)

    # The controller's own lines.
    browser.find_element(By.CSS_SELECTOR, "#controller button[data-toggle]").click()
    wait_until(
        browser, "the controller's lines", lambda d: "head ready" in text_of(d, "#controller pre")
    )


# -- the admin server alone: token sign-in, live metrics -------------------------------
TOKEN = "dash-token"
DETAILS: dict[str, Any] = {
    "controller_info": {
        "node_id": "n1",
        "node_ip": "10.0.0.1",
        "actor_name": "SERVE_CONTROLLER_ACTOR",
        "worker_id": "42",
    },
    "proxy_location": "EveryNode",
    "proxies": {
        "n1": {"node_id": "n1", "node_ip": "10.0.0.1", "status": "HEALTHY", "worker_id": "43"}
    },
    "applications": {
        "shop": {
            "name": "shop",
            "status": "DEPLOYING",
            "message": "",
            "route_prefix": "/shop",
            "last_deployed_time_s": 0,
            "deployed_app_config": None,
            "deployments": {
                "Cart": {
                    "name": "Cart",
                    "status": "UPDATING",
                    "message": "",
                    "deployment_config": {"num_replicas": 1},
                    "target_num_replicas": 1,
                    "replicas": [],
                }
            },
        }
    },
}


class FakeBackend:
    def __init__(self, details: dict[str, Any]) -> None:
        self.shown = details
        self.included: set[frozenset[str]] = set()

    def details(
        self, api_type: str | None, include: frozenset[str] = frozenset()
    ) -> dict[str, Any]:
        self.included.add(include)
        return self.shown

    def controller_logs(self, limit: int) -> list[str]:
        return []


class AdminAlone:
    """An AdminServer with a fake backend, on its own event loop in a thread."""

    def __init__(self, token: str | None, details: dict[str, Any] = DETAILS) -> None:
        self.loop = new_event_loop()
        self.backend = FakeBackend(details)
        self.server = AdminServer(self.backend, token=token)  # type: ignore[arg-type]
        sock = bind_admin_socket("127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(sock), self.loop).result(10)
        self.scrapes = 0

    def serve_metrics(self) -> None:
        """``/metrics`` whose counters grow by 10 requests and 1 error per scrape."""

        def metrics(exchange: Any) -> None:
            self.scrapes += 1
            n = self.scrapes
            labels = 'application="shop",route="/shop",method="GET"'
            text = (
                f'ray_serve_num_http_requests_total{{{labels},status_code="200"}} {10 * n}\n'
                f'ray_serve_num_http_error_requests_total{{{labels},error_code="500"}} {n}\n'
            )
            exchange.send(200, b"text/plain; version=0.0.4; charset=utf-8", text.encode())

        self.server._routes["/metrics"] = {"GET": metrics}

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def admin_with_token() -> Iterator[AdminAlone]:
    admin = AdminAlone(TOKEN)
    yield admin
    admin.close()


def test_sign_in_with_the_token_then_live_metrics(
    admin_with_token: AdminAlone, browser: WebDriver
) -> None:
    admin_with_token.serve_metrics()
    browser.delete_all_cookies()
    browser.get(admin_with_token.url + "/#/serve")
    form = wait_until(browser, "the sign-in form", lambda d: d.find_element(By.ID, "token"))
    wait_until(browser, "the sign-in form shown", lambda d: form.is_displayed())
    form.send_keys("wrong")
    browser.find_element(By.CSS_SELECTOR, "#login button").click()
    wait_until(browser, "the refusal", lambda d: "not accepted" in text_of(d, "#login-error"))
    form.clear()
    form.send_keys(TOKEN)
    browser.find_element(By.CSS_SELECTOR, "#login button").click()
    wait_until(browser, "the application", lambda d: "DEPLOYING" in text_of(d, '[data-app="shop"]'))
    assert not browser.find_element(By.ID, "login").is_displayed()
    cookie = browser.get_cookie("ray-authentication-token")
    assert cookie is not None and cookie["httpOnly"] and cookie["value"] == TOKEN
    # Two scrapes apart: 10 requests and 1 error per interval.
    line = '[data-app="shop"] > .metrics'
    wait_until(browser, "the request rate", lambda d: "req/s" in text_of(d, line))
    assert "(10.0%)" in text_of(browser, line)
    assert "live metrics" in text_of(browser, "#metrics-state")


@pytest.fixture
def admin_without_metrics() -> Iterator[AdminAlone]:
    admin = AdminAlone(None)
    admin.server._routes["/metrics"] = {
        "GET": lambda exchange: exchange.text(404, "404: Not Found")
    }
    yield admin
    admin.close()


def test_without_metrics_the_page_says_so(
    admin_without_metrics: AdminAlone, browser: WebDriver
) -> None:
    browser.get(admin_without_metrics.url + "/")
    wait_until(browser, "the application", lambda d: "shop" in text_of(d, '[data-app="shop"]'))
    assert "metrics unavailable" in text_of(browser, "#metrics-state")
    assert text_of(browser, '[data-app="shop"] > .metrics') == "\N{EN DASH}"
    assert "10.0.0.1" in text_of(browser, "#proxies")


def _app(name: str, route: str | None, **extra: Any) -> dict[str, Any]:
    shop: dict[str, Any] = DETAILS["applications"]["shop"]
    return {**shop, "name": name, "route_prefix": route, "status": "RUNNING", **extra}


@pytest.fixture
def admin_with_a_rollout() -> Iterator[AdminAlone]:
    rollout = {
        "to": "shop_v2",
        "state": "RUNNING",
        "weight_percent": 25.0,
        "message": "step 2 of 4: 25% to 'shop_v2', checked after 30 s",
        "ended_at": None,
    }
    policy = {"split": {"shop": 0.75, "shop_v2": 0.25}, "shadows": {"probe": 0.1}}
    details = {
        **DETAILS,
        "applications": {
            "shop": _app("shop", "/shop", traffic=policy, rollout=rollout),
            "shop_v2": _app("shop_v2", None, traffic=None, rollout=None),
            "probe": _app("probe", None, traffic=None, rollout=None),
        },
    }
    admin = AdminAlone(None, details)
    yield admin
    admin.close()


def test_traffic_split_shadow_and_rollout_are_shown(
    admin_with_a_rollout: AdminAlone, browser: WebDriver
) -> None:
    browser.get(admin_with_a_rollout.url + "/")
    shop = '[data-app="shop"]'
    wait_until(browser, "the split", lambda d: "split:" in text_of(d, f"{shop} .traffic"))
    assert text_of(browser, f"{shop} .traffic").splitlines() == [
        "split: shop 75% \N{MIDDLE DOT} shop_v2 25%",
        "shadows: probe 10%",
    ]
    rollout = text_of(browser, f"{shop} .rollout")
    assert rollout.startswith("RUNNING rollout to shop_v2: 25% of requests"), rollout
    assert "step 2 of 4" in rollout
    assert text_of(browser, '[data-app="shop_v2"] .traffic') == "serves 25% of shop's requests"
    assert "copies of 10% of its requests" in text_of(browser, '[data-app="probe"] .traffic')
    assert text_of(browser, '[data-app="probe"] .rollout') == ""
    assert frozenset({"traffic", "rollout"}) in admin_with_a_rollout.backend.included
