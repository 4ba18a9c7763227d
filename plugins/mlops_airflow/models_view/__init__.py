"""The Models view: a read-only FastAPI app over the registry and run folders, behind Airflow's auth.

Registered by ``plugins/mlops_plugin.py`` under ``/mlops`` of the Airflow API server.
The data comes from :mod:`include.mlops.registry.catalog`; this package adds what only
Airflow knows: who may see which model, the runs' states and the UI's links.
"""
