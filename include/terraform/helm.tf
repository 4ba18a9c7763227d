# The official Apache Airflow chart with the project's values (include/k8s/helm/values.yaml, written for this
# chart version).  What differs per installation comes from variables: `set` for scalar keys, and one more
# values document for the env list, because Helm replaces a list as a whole (locals.tf merges it), and for the
# pull Secret, which may be null.
resource "helm_release" "airflow" {
  name       = var.release_name
  namespace  = kubernetes_namespace_v1.airflow.metadata[0].name
  repository = local.airflow_chart.repository
  chart      = local.airflow_chart.name
  version    = local.airflow_chart.version
  timeout    = var.helm_timeout_seconds

  values = concat(
    [file(local.helm_values_file)],
    var.extra_helm_values,
    [yamlencode(local.release_values)],
  )

  set = [
    { name = "images.airflow.repository", value = var.image.repository },
    # type string: a tag such as 2.10 would otherwise reach the chart as the number 2.1.
    { name = "images.airflow.tag", value = var.image.tag, type = "string" },
    { name = "data.metadataSecretName", value = var.secret_names.metadata_db },
    { name = "fernetKeySecretName", value = var.secret_names.fernet_key },
    { name = "jwtSecretName", value = var.secret_names.jwt_secret },
    { name = "apiSecretKeySecretName", value = var.secret_names.api_secret_key },
  ]

  lifecycle {
    precondition {
      condition     = local.model_server_url != null
      error_message = local.model_server_missing
    }
  }

  # The chart's pods mount the artifact PVC and run as the worker ServiceAccount, which the manifests create.
  depends_on = [
    kubernetes_persistent_volume_claim_v1.artifacts,
    kubernetes_manifest.before_release,
  ]
}
