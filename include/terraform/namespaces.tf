# The two namespaces.  Their Pod Security labels are read from include/k8s (locals.tf), so the kustomize
# install and this module cannot drift apart on them.
resource "kubernetes_namespace_v1" "airflow" {
  metadata {
    name   = var.namespaces.airflow
    labels = merge(local.common_labels, local.namespace_labels.airflow)
  }
}

resource "kubernetes_namespace_v1" "steps" {
  metadata {
    name   = var.namespaces.steps
    labels = merge(local.common_labels, local.namespace_labels.steps)
  }
}

# A runaway sweep cannot take every GPU node (the production overlay's quota, as a variable here).
resource "kubernetes_resource_quota_v1" "gpus" {
  count = var.gpu_quota == null ? 0 : 1

  metadata {
    name      = "mlops-gpus"
    namespace = kubernetes_namespace_v1.steps.metadata[0].name
    labels    = local.common_labels
  }
  spec {
    hard = {
      "requests.nvidia.com/gpu" = tostring(var.gpu_quota)
    }
  }
}
