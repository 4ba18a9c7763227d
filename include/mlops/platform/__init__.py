"""Platform checks for the deployables (Kubernetes manifests); no Airflow, no cluster needed."""
