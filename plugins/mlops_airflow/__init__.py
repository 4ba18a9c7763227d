"""Airflow glue for the lifecycle library: the DAG factory, the step operator and the trigger form.

This package holds no ML logic; it turns ``include.mlops`` steps into tasks.
"""
