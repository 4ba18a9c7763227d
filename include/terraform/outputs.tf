output "namespaces" {
  description = "The namespaces the module created: `airflow` (the Helm release) and `steps` (step pods and the model server)."
  value = {
    airflow = kubernetes_namespace_v1.airflow.metadata[0].name
    steps   = kubernetes_namespace_v1.steps.metadata[0].name
  }
}

output "model_server_url" {
  description = "The model server's REST endpoint inside the cluster; Airflow's Connection model_server_default points here."
  value       = local.model_server_url

  precondition {
    condition     = local.model_server_url != null
    error_message = local.model_server_missing
  }
}

output "release_name" {
  description = "Name of the Airflow Helm release."
  value       = helm_release.airflow.name
}

output "artifact_pvc_name" {
  description = "Name of the artifact PVC, the same in both namespaces."
  value       = local.artifact_pvc_name
}
