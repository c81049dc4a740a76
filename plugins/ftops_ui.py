"""The FT-Ops page in the Airflow UI: "FT-Ops" in the navigation, served by a FastAPI app in the API server.

The app (``ftops_airflow.ui.app``) lives with the other Airflow glue in ``include/``; this file only registers
it. Loading it is cheap (FastAPI and the app's routes; the library is imported on the first request), since
every Airflow component loads the plugins folder.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from ftops_airflow.ui.app import app

URL_PREFIX = "/ftops"


class FtopsUIPlugin(AirflowPlugin):
    name = "ftops_ui"
    fastapi_apps = [{"app": app, "url_prefix": URL_PREFIX, "name": "FT-Ops"}]
    external_views = [
        {
            "name": "FT-Ops",
            "href": f"{URL_PREFIX}/",  # shown inside the UI (an iframe at /plugin/ftops), same origin and login
            "url_route": "ftops",
            "destination": "nav",
            "nav_top_level": True,
            "icon": f"{URL_PREFIX}/static/icon.svg",
        }
    ]
