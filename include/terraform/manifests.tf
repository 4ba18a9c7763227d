# The project's own objects from include/k8s (ServiceAccounts, RBAC, NetworkPolicies, the Jobs and the model
# server), decoded in locals.tf.  Two groups, because some need the release and the release needs others:
# the worker ServiceAccount must exist before the chart's pods start, and the Job that creates the deploy
# pool runs Airflow's CLI against the database that the chart's migration job prepares.
resource "kubernetes_manifest" "before_release" {
  for_each = local.objects_before_release

  manifest        = each.value
  computed_fields = each.value.kind == "Job" ? local.job_computed_fields : local.default_computed_fields

  lifecycle {
    replace_triggered_by = [terraform_data.object_revision[each.key]]
  }

  depends_on = [
    kubernetes_namespace_v1.airflow,
    kubernetes_namespace_v1.steps,
    kubernetes_persistent_volume_claim_v1.artifacts,
  ]
}

resource "kubernetes_manifest" "after_release" {
  for_each = local.objects_after_release

  manifest        = each.value
  computed_fields = each.value.kind == "Job" ? local.job_computed_fields : local.default_computed_fields

  lifecycle {
    replace_triggered_by = [terraform_data.object_revision[each.key]]
  }

  depends_on = [helm_release.airflow]
}

# A Job's pod template is immutable, so a changed Job (a new image tag, say) must be replaced, not patched;
# every other object is updated in place (its revision stays constant).  Both Jobs are idempotent, and a Job
# that its ttlSecondsAfterFinished removed is simply created, and so run, again by the next apply.
resource "terraform_data" "object_revision" {
  for_each = merge(local.objects_before_release, local.objects_after_release)

  input = each.value.kind == "Job" ? sha256(jsonencode(each.value)) : "updated in place"
}

locals {
  default_computed_fields = ["metadata.labels", "metadata.annotations"]
  # The Job controller adds its own labels to the pod template and sets the selector.
  job_computed_fields = concat(local.default_computed_fields, ["spec.selector", "spec.template.metadata.labels"])
}
