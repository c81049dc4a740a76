"""A screenshot of the FT-Ops page in the Airflow UI, taken by a headless Chromium (Playwright).

    . scripts/env.sh && python scripts/ui_screenshot.py [--url http://127.0.0.1:8080] [--out docs/ui/ftops-page.png]

Without ``--url`` it starts ``airflow api-server`` on a free port of 127.0.0.1 on this checkout's state
(``$AIRFLOW_HOME``'s metadata DB, ``$FTOPS_HOME``, the plugins folder), takes the screenshot and stops it: it
triggers nothing and writes nothing under ``FTOPS_HOME``. With ``--url`` it uses a running UI (``make ui``).
The demo's config (``$FTOPS_HOME/ftops-demo.yaml``) is used when ``FTOPS_CONFIG`` is not set, so the canary
ramp reads as the demo ran it. With login on, ``FTOPS_AIRFLOW_USERNAME`` and ``FTOPS_AIRFLOW_PASSWORD`` sign in.

The browser is the system's Chromium (``apt-get install -y chromium``); Playwright's own download is not used.
``tests/integration/test_ui.py`` uses :func:`find_browser` and :func:`capture` too.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]


def find_browser() -> str | None:
    """The system's Chromium: ``chromium`` (or a relative) on PATH, else ``/usr/bin/chromium``; None if absent."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if found := shutil.which(name):
            return found
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None


def open_ftops_page(page: Any, url: str, username: str | None = None, password: str | None = None) -> Any:
    """Open the Airflow UI at ``url`` (signing in if it asks), click "FT-Ops" and wait for the page's data.

    Returns:
        The FT-Ops page's frame (a Playwright ``FrameLocator``).
    """
    page.goto(f"{url}/")
    page.wait_for_load_state("networkidle")
    if "/auth/login" in page.url:
        if not (username and password):
            raise SystemExit("the UI asks for a login: set FTOPS_AIRFLOW_USERNAME and FTOPS_AIRFLOW_PASSWORD")
        page.get_by_label("Username").fill(username)
        page.get_by_label("Password").fill(password)
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url(lambda u: "/auth/" not in u)
    page.get_by_role("link", name="FT-Ops").click()
    page.wait_for_url("**/plugin/ftops**")
    frame = page.frame_locator("iframe")
    frame.locator("body[data-loaded='true']").wait_for(timeout=120_000)  # the first read imports MLflow, DVC
    return frame


def capture(page: Any, path: Path) -> None:
    """The Airflow UI with the whole FT-Ops page in it (the page scrolls inside its frame: grow the window)."""
    body = page.frame_locator("iframe").locator("body")
    height = int(body.evaluate("b => b.ownerDocument.documentElement.scrollHeight"))
    size = page.viewport_size
    page.set_viewport_size({"width": size["width"], "height": max(size["height"], height + 40)})
    page.wait_for_timeout(500)  # the frame lays out again
    path.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(path))
    page.set_viewport_size(size)


@contextmanager
def api_server(log_path: Path) -> Iterator[str]:
    """``airflow api-server`` on a free port of 127.0.0.1 with this checkout's plugins; stopped on exit."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"), "AIRFLOW__API__PORT": str(port)}
    home = Path(env.get("FTOPS_HOME", ROOT / ".ftops"))
    if "FTOPS_CONFIG" not in env and (home / "ftops-demo.yaml").is_file():
        env["FTOPS_CONFIG"] = str(home / "ftops-demo.yaml")
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "airflow", "api-server", "--host", "127.0.0.1", "--port",
                                 str(port)], env=env, stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/api/v2/monitor/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"airflow api-server did not start; its log:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="a running Airflow UI (default: start an API server for the screenshot)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "ui" / "ftops-page.png")
    parser.add_argument("--width", type=int, default=1440)
    args = parser.parse_args(argv)
    from playwright.sync_api import sync_playwright

    browser_path = find_browser()
    if browser_path is None:
        raise SystemExit("no Chromium found: apt-get install -y chromium")
    with tempfile.TemporaryDirectory() as tmp, (
        _running(args.url) if args.url else api_server(Path(tmp) / "api-server.log")
    ) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=browser_path, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": args.width, "height": 1000})
            open_ftops_page(page, url, os.environ.get("FTOPS_AIRFLOW_USERNAME"), os.environ.get("FTOPS_AIRFLOW_PASSWORD"))
            capture(page, args.out)
        finally:
            browser.close()
    print(f"wrote {args.out}")
    return 0


@contextmanager
def _running(url: str) -> Iterator[str]:
    yield url.rstrip("/")


if __name__ == "__main__":
    sys.exit(main())
