"""The FT-Ops page: a FastAPI app mounted in Airflow's API server by ``plugins/ftops_ui.py``.

Routes (under the plugin's prefix, ``/ftops``), every one behind Airflow's auth manager:

* ``GET /``: the page (HTML; its script renders ``api/dashboard``). Without a signed-in user it redirects to
  Airflow's login page, which comes back here.
* ``GET /static/<file>``: the page's script and style (no CDN: everything it draws is its own SVG).
* ``GET /api/dashboard``: the data (:func:`ftops.pipeline.dashboard.collect_dashboard`), read with the caller's
  own Airflow credentials, so the Airflow runs shown are those the user may see. 401 without a user.
* ``GET /data-docs/<path>``: the Great Expectations Data Docs site that curation writes, confined to its folder.

A user needs read access to the ``ftops_*`` DAGs (checked through the auth manager): 403 otherwise.
The library does the work; this module only authenticates, builds the sources and serves.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

# Airflow's API modules are imported in the handlers: every Airflow process (a task runner too) loads the
# plugins folder, and only the API server needs them (~0.7 s).
log = logging.getLogger(__name__)
COOKIE = "_token"  # airflow.api_fastapi.auth.managers.base_auth_manager.COOKIE_NAME_JWT_TOKEN
Bearer = Annotated[HTTPAuthorizationCredentials | None, Depends(HTTPBearer(auto_error=False))]
STATIC = Path(__file__).parent / "static"
STATIC_FILES = {"page.js": "text/javascript", "page.css": "text/css", "icon.svg": "image/svg+xml"}
GUARD_DAG = "ftops_finetune"  # who may read this DAG may read the page

app = FastAPI(title="FT-Ops", description="The FT-Ops page in the Airflow UI", docs_url=None, redoc_url=None,
              openapi_url=None)  # fmt: skip
_metadata_cache: dict[str, dict[str, Any]] = {}  # dataset metadata by tag@hash: a version never changes
_engine_lock = threading.Lock()
_engines: dict[str, Any] = {}


def _airflow_root() -> str:
    """The path Airflow's UI is served under (``[api] base_url``; usually ``""``)."""
    from airflow.configuration import conf

    return urlsplit(conf.get("api", "base_url", fallback="") or "").path.rstrip("/")


async def _user(request: Request, bearer: Bearer) -> Any:
    """The signed-in Airflow user (bearer token or the UI's cookie), allowed to read the FT-Ops DAGs."""
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import DagDetails
    from airflow.api_fastapi.core_api.security import get_user

    user = await get_user(request, None, bearer)
    if not get_auth_manager().is_authorized_dag(method="GET", user=user, details=DagDetails(id=GUARD_DAG)):
        raise HTTPException(status_code=403, detail=f"reading the FT-Ops page needs read access to {GUARD_DAG}")
    return user


UserDep = Annotated[Any, Depends(_user)]


@app.get("/", response_class=HTMLResponse, include_in_schema=False)
async def page(request: Request, bearer: Bearer) -> Response:
    from airflow.api_fastapi.app import get_auth_manager

    try:
        await _user(request, bearer)
    except HTTPException as exc:
        if exc.status_code != 401:
            raise
        here = f"{_airflow_root()}{request.scope.get('root_path', '')}/"
        return RedirectResponse(get_auth_manager().get_url_login(next_url=here), status_code=303)
    return HTMLResponse((STATIC / "page.html").read_text(), headers={"Cache-Control": "no-store"})


@app.get("/static/{name}", include_in_schema=False)
def static(name: str, _: UserDep) -> Response:
    if name not in STATIC_FILES:
        raise HTTPException(status_code=404)
    return FileResponse(STATIC / name, media_type=STATIC_FILES[name])


@app.get("/api/dashboard")
def dashboard(request: Request, _: UserDep) -> dict[str, Any]:
    """What the page shows (sync: the sources block, so FastAPI runs it in its thread pool)."""
    from ftops.core.airflow_api import AirflowAPI
    from ftops.core.config import load_config
    from ftops.pipeline.dashboard import collect_dashboard

    cfg = load_config()
    api = AirflowAPI(_self_url(request), token=_caller_token(request))
    return collect_dashboard(cfg, _engine(cfg.warehouse_conn_id), api, airflow_ui=_airflow_root(),
                             metadata_cache=_metadata_cache)  # fmt: skip


DATA_DOCS_HEADERS = {"Content-Security-Policy": "sandbox", "X-Content-Type-Options": "nosniff"}


@app.get("/data-docs/{path:path}", include_in_schema=False)
def data_docs(path: str, _: UserDep) -> FileResponse:
    """A file of the Data Docs site; a path that leaves the site folder (``..``, a link) is not found.

    Served with ``Content-Security-Policy: sandbox``: the pages load scripts from public CDNs and hold samples
    of logged text, so they render without scripts, as an opaque origin that cannot reach the Airflow session or its API.
    """
    from ftops.pipeline.dashboard import data_docs_root

    root = data_docs_root().resolve()
    target = (root / (path or "index.html")).resolve()
    if not target.is_relative_to(root) or not target.is_file() or target.name.startswith("."):
        raise HTTPException(status_code=404, detail="no such Data Docs page")
    return FileResponse(target, headers=DATA_DOCS_HEADERS)


def _self_url(request: Request) -> str:
    """This API server as its REST clients reach it: ``$FTOPS_AIRFLOW_URL``, else the socket the page came in on."""
    if os.environ.get("FTOPS_AIRFLOW_URL"):
        return os.environ["FTOPS_AIRFLOW_URL"]
    host, port = request.scope.get("server") or ("127.0.0.1", os.environ.get("AIRFLOW__API__PORT") or 8080)
    host = f"[{host}]" if ":" in str(host) else host
    return f"http://{host}:{port}{_airflow_root()}"


def _caller_token(request: Request) -> str | None:
    """The caller's own token (bearer header or UI cookie): Airflow answers with what they may see."""
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:]
    return request.cookies.get(COOKIE)


def _engine(conn_id: str) -> Any:
    """The warehouse: ``$FTOPS_WAREHOUSE_URL`` (as the CLI reads it), else the DAGs' Airflow connection."""
    url = os.environ.get("FTOPS_WAREHOUSE_URL")
    key = url or conn_id
    with _engine_lock:
        if key not in _engines:
            if url:
                from ftops.warehouse.engines import create_engine

                _engines[key] = create_engine(url)  # never logs parameters
            else:
                from ftops_airflow.common import warehouse_engine

                _engines[key] = warehouse_engine(conn_id)
        return _engines[key]
