# The artifact root: one share, two static PersistentVolumes (a PVC is namespaced, a PV binds one PVC), each
# bound to the PVC `mlops-artifacts` of one namespace.  Binding is static (claimRef + volumeName), so no
# dynamic provisioner claims the PVCs first, and the storage class name only has to match on both sides.
# Reclaim policy Retain: destroying the module never deletes the registry or the run history.
# Share mode only: with artifact_store.kind = "object_storage" local.artifact_volumes is empty.
resource "kubernetes_persistent_volume_v1" "artifacts" {
  for_each = local.artifact_volumes

  metadata {
    name = each.value.pv_name
    # The label the kustomize overlays patch by; kept so either install finds the same volumes.
    labels = merge(local.common_labels, { "mlops/share" = "artifacts" })
  }
  spec {
    capacity = {
      storage = var.artifact_share.size
    }
    access_modes                     = [local.artifact_access_mode]
    persistent_volume_reclaim_policy = "Retain"
    storage_class_name               = var.storage_class_name
    mount_options                    = var.artifact_share.mount_options

    claim_ref {
      namespace = each.value.namespace
      name      = local.artifact_pvc_name
    }

    persistent_volume_source {
      dynamic "nfs" {
        for_each = var.artifact_share.nfs == null ? [] : [var.artifact_share.nfs]
        content {
          server = nfs.value.server
          path   = nfs.value.path
        }
      }
      dynamic "host_path" {
        for_each = var.artifact_share.host_path == null ? [] : [var.artifact_share.host_path]
        content {
          path = host_path.value
          type = "DirectoryOrCreate"
        }
      }
    }
  }
}

resource "kubernetes_persistent_volume_claim_v1" "artifacts" {
  for_each = local.artifact_volumes

  metadata {
    name      = local.artifact_pvc_name
    namespace = each.value.namespace
    labels    = local.common_labels
  }
  spec {
    access_modes       = [local.artifact_access_mode]
    storage_class_name = var.storage_class_name
    volume_name        = kubernetes_persistent_volume_v1.artifacts[each.key].metadata[0].name
    resources {
      requests = {
        storage = var.artifact_share.size
      }
    }
  }

  depends_on = [kubernetes_namespace_v1.airflow, kubernetes_namespace_v1.steps]
}
