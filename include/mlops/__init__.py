"""The lifecycle library: typed step functions and their CLI (``python -m include.mlops``).

Nothing here imports Airflow.  Heavy libraries (TensorFlow, pandas, Great
Expectations) are imported inside the step modules that need them, never by
this package or by :mod:`include.mlops.config`, :mod:`include.mlops.steps` (the step
declarations) and :mod:`include.mlops.evaluation.gate`, which the DAG files use at parse time.
"""
