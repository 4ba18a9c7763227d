"""Project code that is not DAG wiring or Airflow glue."""
