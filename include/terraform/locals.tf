# What the module applies, computed from include/k8s with Terraform's built-in functions only (no provider
# function), so tests/infra/test_terraform.py can evaluate these very expressions with `terraform console`
# offline.  Everything here is a pure function of the variables and the files in include/k8s.

locals {
  k8s_dir = "${path.module}/../k8s"

  airflow_chart = {
    repository = "https://airflow.apache.org"
    name       = "airflow"
    # The chart version include/k8s/helm/values.yaml is written for (its header records the same version).
    version = "1.22.0"
  }
  helm_values_file = "${local.k8s_dir}/helm/values.yaml"
  helm_values      = yamldecode(file(local.helm_values_file))

  # The project's manifests that the module applies, relative to include/k8s.  kustomization.yaml files are
  # not read: the module does itself what the overlays do (share, storage class, quota) from variables.
  # An object takes its namespace from metadata.namespace, else from the `namespace:` of its folder's
  # kustomization.yaml, exactly as `kubectl kustomize` renders it (the tests compare the two).
  manifest_files = [
    "base/namespaces.yaml", # read for the Pod Security labels only: the namespaces are resources here
    "base/serviceaccounts.yaml",
    "base/rbac.yaml",
    "base/networkpolicies.yaml",
    "base/prepare-share-job.yaml",
    "base/deploy-pool-job.yaml",
    "serving/base/monitoring-config.yaml",
    "serving/base/deployment.yaml",
    "serving/base/service.yaml",
    "serving/base/hpa.yaml",
    "serving/base/pdb.yaml",
    "serving/monitoring/servicemonitor.yaml", # only with var.install_service_monitor (needs the CRDs)
  ]
  # Not read: base/storage.yaml (the PVs and PVCs are resources here, from var.artifact_share) and the
  # overlays (their share, sizes and quota are variables here).

  # Kinds that the module manages as typed resources instead (namespaces.tf, storage.tf).
  kinds_managed_as_resources = ["Namespace", "PersistentVolume", "PersistentVolumeClaim"]
  cluster_scoped_kinds       = ["Namespace", "PersistentVolume", "StorageClass", "ClusterRole", "ClusterRoleBinding", "PriorityClass", "RuntimeClass"]
  pod_template_kinds         = ["Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"]

  # The manifests name the contract's namespaces; the variables may rename them.
  manifest_namespaces = { airflow = "mlops", steps = "mlops-steps" }
  namespace_renames = {
    (local.manifest_namespaces.airflow) = var.namespaces.airflow
    (local.manifest_namespaces.steps)   = var.namespaces.steps
  }

  common_labels = { "app.kubernetes.io/part-of" = "mlops", "app.kubernetes.io/managed-by" = "terraform" }

  # Every YAML document of every listed file, with the file it came from.  A document is the text between
  # `---` lines; comment-only and empty documents are dropped.
  manifest_documents = flatten([
    for path in local.manifest_files : [
      for text in split("\n---", "\n${file("${local.k8s_dir}/${path}")}") : {
        path              = path
        default_namespace = try(yamldecode(file("${local.k8s_dir}/${dirname(path)}/kustomization.yaml")).namespace, null)
        object            = yamldecode(text)
      } if trimspace(replace(text, "/(?m)^\\s*#.*$/", "")) != ""
    ]
  ])

  # Namespace, renames and the common labels applied; the namespaces named inside objects (RoleBinding
  # subjects, a ServiceMonitor's namespaceSelector) follow the renames too.
  placed_objects = [
    for doc in local.manifest_documents : merge(
      doc.object,
      {
        metadata = merge(
          doc.object.metadata,
          { labels = merge(local.common_labels, try(doc.object.metadata.labels, {})) },
          contains(local.cluster_scoped_kinds, doc.object.kind) ? {} : {
            namespace = lookup(local.namespace_renames, try(doc.object.metadata.namespace, doc.default_namespace), try(doc.object.metadata.namespace, doc.default_namespace))
          },
        )
      },
      try({ subjects = [for s in doc.object.subjects : merge(s, try({ namespace = local.namespace_renames[s.namespace] }, {}))] }, {}),
      # A ServiceMonitor names the namespace it scrapes.
      try({ spec = merge(doc.object.spec, { namespaceSelector = merge(doc.object.spec.namespaceSelector, {
        matchNames = [for name in doc.object.spec.namespaceSelector.matchNames : lookup(local.namespace_renames, name, name)]
      }) }) }, {}),
    )
  ]

  # Images, as the kustomize `images:` entries of the files' folders set them (placeholder name -> image),
  # except those that follow the variables: the Airflow image, the trainer image derived from it exactly as
  # include/k8s/helm/values.yaml derives it, and the model server's image when model_server_image is set.
  kustomize_images = merge(flatten([
    for dir in distinct([for path in local.manifest_files : dirname(path)]) : [
      for entry in try(yamldecode(file("${local.k8s_dir}/${dir}/kustomization.yaml")).images, []) : { (entry.name) = entry }
    ]
  ])...)
  model_server_name = "mlops-model-server"
  # The server container only: the pod's request logger runs the trainer image, which follows var.image.
  model_server_image_names = flatten([
    for obj in local.placed_objects : [
      for c in obj.spec.template.spec.containers : replace(c.image, "/[:@][^/]*$/", "") if c.name == "server"
    ]
    if obj.kind == "Deployment" && obj.metadata.name == local.model_server_name
  ])
  image_overrides = merge(
    {
      "mlops-airflow" = "${var.image.repository}:${var.image.tag}"
      "mlops-trainer" = "${dirname(var.image.repository)}/mlops-trainer:${var.image.tag}"
    },
    var.model_server_image == null ? {} : { for name in local.model_server_image_names : name => var.model_server_image },
  )
  # The Secret names the manifests share with values.yaml follow var.secret_names (the deploy-pool Job
  # reads the metadata DB connection from the same Secret as the chart).
  secret_renames = {
    (local.helm_values.data.metadataSecretName) = var.secret_names.metadata_db
  }

  # The registry pull Secret (var.image_pull_secret) replaces the manifests' own on every ServiceAccount and pod
  # template (null drops it), and the ServiceMonitor carries the labels the cluster's Prometheus selects.
  pull_secrets = var.image_pull_secret == null ? [] : [{ name = var.image_pull_secret }]
  configured_objects = [
    for obj in local.placed_objects : merge(
      { for key, value in obj : key => value if !(obj.kind == "ServiceAccount" && key == "imagePullSecrets") },
      obj.kind == "ServiceAccount" && length(local.pull_secrets) > 0 ? { imagePullSecrets = local.pull_secrets } : {},
      !contains(local.pod_template_kinds, obj.kind) ? {} : {
        spec = merge(obj.spec, { template = merge(obj.spec.template, { spec = merge(
          { for key, value in obj.spec.template.spec : key => value if key != "imagePullSecrets" },
          length(local.pull_secrets) > 0 ? { imagePullSecrets = local.pull_secrets } : {},
        ) }) })
      },
      obj.kind != "ServiceMonitor" ? {} : {
        metadata = merge(obj.metadata, { labels = merge(
          { for key, value in obj.metadata.labels : key => value if key != "release" },
          var.service_monitor_labels,
        ) })
      },
    )
  ]

  # The object-storage mode (var.artifact_store): no share, so neither the Job that prepares it nor the
  # share-mode model server (include/k8s/serving/overlays/object-storage installs the mirrored one); every
  # ServiceAccount carries the cloud identity, as overlays/object-storage gives it.
  object_storage       = var.artifact_store.kind == "object_storage"
  share_only_objects   = ["Job/mlops-prepare-share", "Deployment/${local.model_server_name}"]
  identity_annotations = local.object_storage ? var.artifact_store.service_account_annotations : {}
  stored_objects = [
    for obj in local.configured_objects : merge(
      obj,
      obj.kind == "ServiceAccount" && length(local.identity_annotations) > 0 ? {
        metadata = merge(obj.metadata, { annotations = merge(try(obj.metadata.annotations, {}), local.identity_annotations) })
      } : {},
    )
    if !(local.object_storage && contains(local.share_only_objects, "${obj.kind}/${obj.metadata.name}"))
  ]

  applied_objects = [
    for obj in local.stored_objects : !contains(local.pod_template_kinds, obj.kind) ? obj : merge(obj, {
      spec = merge(obj.spec, {
        template = merge(obj.spec.template, {
          spec = merge(
            obj.spec.template.spec,
            { containers = [for c in obj.spec.template.spec.containers : merge(c, local.container_patch[c.image], try({ env = [for e in c.env : merge(e, try({ valueFrom = { secretKeyRef = merge(e.valueFrom.secretKeyRef, { name = lookup(local.secret_renames, e.valueFrom.secretKeyRef.name, e.valueFrom.secretKeyRef.name) }) } }, {}))] }, {}))] },
            try({ initContainers = [for c in obj.spec.template.spec.initContainers : merge(c, local.container_patch[c.image])] }, {}),
          )
        })
      })
    })
    if !contains(local.kinds_managed_as_resources, obj.kind) && (var.install_service_monitor || obj.kind != "ServiceMonitor")
  ]
  # Every image as written in a manifest -> its name without tag or digest (what `images:` entries match).
  manifest_images = {
    for image in distinct(flatten([
      for obj in local.placed_objects : [
        for c in concat(obj.spec.template.spec.containers, try(obj.spec.template.spec.initContainers, [])) : c.image
      ] if contains(local.pod_template_kinds, obj.kind)
    ])) : image => replace(image, "/[:@][^/]*$/", "")
  }
  # image as written -> { image = what to apply }, or {} to leave it.  An `images:` entry without newTag or
  # digest keeps the manifest's tag, as kustomize does.
  container_patch = {
    for image, name in local.manifest_images : image => try(
      { image = local.image_overrides[name] },
      { image = "${try(local.kustomize_images[name].newName, local.kustomize_images[name].name)}${try("@${local.kustomize_images[name].digest}", ":${local.kustomize_images[name].newTag}", trimprefix(image, name))}" },
      {},
    )
  }

  # Keyed by kind/namespace/name: stable across reorderings of the files.
  object_keys = [for obj in local.applied_objects : join("/", compact([obj.kind, try(obj.metadata.namespace, ""), obj.metadata.name]))]

  # Jobs in the Airflow namespace run Airflow commands against its database, so they wait for the release
  # (its migrations); everything else is created before it (the worker ServiceAccount above all).
  objects_after_release = {
    for i, obj in local.applied_objects : local.object_keys[i] => obj
    if obj.kind == "Job" && try(obj.metadata.namespace, "") == var.namespaces.airflow
  }
  objects_before_release = {
    for i, obj in local.applied_objects : local.object_keys[i] => obj
    if !(obj.kind == "Job" && try(obj.metadata.namespace, "") == var.namespaces.airflow)
  }

  # Pod Security labels of each namespace, from the manifests' Namespace objects.
  manifest_namespace_labels = {
    for doc in local.manifest_documents : doc.object.metadata.name => try(doc.object.metadata.labels, {})
    if doc.object.kind == "Namespace"
  }
  namespace_labels = {
    airflow = local.manifest_namespace_labels[local.manifest_namespaces.airflow]
    steps   = local.manifest_namespace_labels[local.manifest_namespaces.steps]
  }

  # The artifact root: the same PVC name in both namespaces, each bound to its own PV on the one share.
  artifact_pvc_name    = "mlops-artifacts"
  artifact_access_mode = try(var.artifact_share.nfs, null) != null ? "ReadWriteMany" : "ReadWriteOnce"
  # None with a bucket (share mode only).
  artifact_volumes = local.object_storage ? {} : {
    airflow = { pv_name = "mlops-artifacts-airflow", namespace = var.namespaces.airflow }
    steps   = { pv_name = "mlops-artifacts-steps", namespace = var.namespaces.steps }
  }

  # The model server's Service as the manifests define it: the URL follows its name and `http` port.
  model_server_service = one([
    for obj in local.applied_objects : obj
    if obj.kind == "Service" && obj.metadata.name == local.model_server_name
  ])
  # null when the manifests lack that Service or port; the preconditions in helm.tf and outputs.tf then stop
  # the plan with a message instead of an attribute error here.
  model_server_port = try(one([for port in local.model_server_service.spec.ports : port.port if port.name == "http"]), null)
  model_server_url  = local.model_server_port == null ? null : "http://${local.model_server_name}.${var.namespaces.steps}.svc.${var.cluster_domain}:${local.model_server_port}"
  # How often the server re-reads models.config (its --model_config_file_poll_wait_seconds): the Connection's
  # extra config_poll_seconds, so that a deploy waits one poll for every replica before it trusts an answer.
  model_server_args = try(one([
    for obj in local.configured_objects : obj
    if obj.kind == "Deployment" && obj.metadata.name == local.model_server_name
  ]).spec.template.spec.containers[0].args, [])
  model_server_poll_seconds = try(one([
    for arg in local.model_server_args : trimprefix(arg, "--model_config_file_poll_wait_seconds=")
    if startswith(arg, "--model_config_file_poll_wait_seconds=")
  ]), null)
  model_server_connection = (local.model_server_url == null || local.model_server_poll_seconds == null
    ? local.model_server_url
  : "${local.model_server_url}?config_poll_seconds=${local.model_server_poll_seconds}")
  model_server_missing = "include/k8s/serving has no Service ${local.model_server_name} with a port named \"http\": the module derives the model server URL (Airflow's Connection model_server_default) from it. Add the Service, or add its file to local.manifest_files in include/terraform/locals.tf."

  # The release's env: values.yaml's list with the entries that depend on this installation replaced.
  # (Helm replaces lists as a whole, so the merged list goes in as one more values document.)
  release_env_overrides = {
    MLOPS_K8S_NAMESPACE               = var.namespaces.steps
    MLOPS_K8S_GPU_NODE_SELECTOR       = join(",", [for key in sort(keys(var.gpu_node_labels)) : "${key}=${var.gpu_node_labels[key]}"])
    AIRFLOW_CONN_MODEL_SERVER_DEFAULT = local.model_server_connection
  }
  # With a bucket the root is its URI, and the share's two settings go (step pods then mount no share).
  release_env_mode = local.object_storage ? { MLOPS_ARTIFACT_ROOT = var.artifact_store.uri } : {}
  release_env_drop = local.object_storage ? ["MLOPS_K8S_ARTIFACT_PVC", "MLOPS_K8S_ARTIFACT_ROOT"] : []
  release_env_all  = merge(local.release_env_overrides, local.release_env_mode)
  release_env = concat(
    [for entry in try(local.helm_values.env, []) : entry if !contains(concat(keys(local.release_env_all), local.release_env_drop), entry.name)],
    [for name in sort(keys(local.release_env_all)) : { name = name, value = local.release_env_all[name] }],
  )
  # The object-storage release, as include/k8s/helm/values-object-storage.yaml has it: task logs in <uri>/logs
  # (remote logging), no logs PVC, no share volume on workers, the cloud identity on the chart's own
  # ServiceAccounts, and the optional fallback Secret.  A list of none or one document (conditional objects of
  # different shapes do not unify).
  object_storage_values = !local.object_storage ? [] : [{
    config = { logging = {
      remote_logging         = "True"
      remote_base_log_folder = "${trimsuffix(var.artifact_store.uri, "/")}/logs"
      remote_log_conn_id     = "aws_default"
    } }
    logs         = { persistence = { enabled = false } }
    workers      = { extraVolumes = [], extraVolumeMounts = [] }
    apiServer    = { serviceAccount = { annotations = var.artifact_store.service_account_annotations } }
    dagProcessor = { serviceAccount = { annotations = var.artifact_store.service_account_annotations } }
    extraEnvFrom = "- secretRef:\n    name: mlops-object-store\n    optional: true\n"
  }]
  # The release's last values document: the env above, and the pull Secret for chart pods and step pods (null
  # removes values.yaml's, so no pod names one).
  release_values = merge(
    { env = local.release_env, registry = { secretName = var.image_pull_secret } },
  local.object_storage_values...)
}
