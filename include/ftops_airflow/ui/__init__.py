"""The FT-Ops page in the Airflow UI: a FastAPI app that ``plugins/ftops_ui.py`` mounts in the API server."""
