# Inputs of the module.  Validation sits on every value a platform engineer is likely to get wrong: a bad
# value fails at `terraform plan` with a message that says what to change, not at apply time in the cluster.

variable "image" {
  description = "The project's Airflow image (include/docker/airflow/Dockerfile) as pushed to your registry. The trainer, GPU trainer and server image names are derived from it in include/k8s/helm/values.yaml."
  type = object({
    repository = string
    tag        = string
  })

  validation {
    # The trainer images are named beside it (dirname of the repository): without a path they would be
    # "./mlops-trainer:<tag>".
    condition     = strcontains(var.image.repository, "/")
    error_message = "image.repository must include the registry path, e.g. registry.example.com/airflow-tf-lifecycle: the trainer images are pushed beside it (<path>/mlops-trainer:<tag>)."
  }

  validation {
    # A tag or digest in the repository would be doubled by the chart (repository:tag).
    condition     = can(regex("^[a-z0-9]([a-z0-9._/-]*[a-z0-9])?(:[0-9]+)?(/[a-z0-9]([a-z0-9._-]*[a-z0-9])?)*$", var.image.repository)) && !strcontains(element(split("/", var.image.repository), length(split("/", var.image.repository)) - 1), ":")
    error_message = "image.repository must be an image name without tag or digest, e.g. registry.example.com/airflow-tf-lifecycle (put the version in image.tag)."
  }

  validation {
    # "latest" makes every pod restart a silent upgrade; workers and step pods could then run different code.
    condition     = can(regex("^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$", var.image.tag)) && var.image.tag != "latest"
    error_message = "image.tag must be a pinned Docker tag (letters, digits, '_', '.', '-'; at most 128 characters), not \"latest\"."
  }
}

variable "namespaces" {
  description = "Namespace names: `airflow` holds the Helm release (scheduler, API server, workers), `steps` the step pods and the model server."
  type = object({
    airflow = optional(string, "mlops")
    steps   = optional(string, "mlops-steps")
  })
  default = {}

  validation {
    condition     = alltrue([for name in values(var.namespaces) : can(regex("^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$", name))])
    error_message = "Each namespace must be a DNS-1123 label: lower-case letters, digits and '-', at most 63 characters, starting and ending with a letter or digit."
  }

  validation {
    # The two namespaces carry different Pod Security levels (baseline vs restricted) and RBAC scopes.
    condition     = var.namespaces.airflow != var.namespaces.steps
    error_message = "namespaces.airflow and namespaces.steps must differ: step pods run under the restricted Pod Security profile and the worker may manage pods only in the steps namespace."
  }
}

variable "storage_class_name" {
  description = "storageClassName on the artifact PVs and PVCs. Binding is static (PV and PVC name each other), so no provisioner or StorageClass object is needed; the name only has to match."
  type        = string
  default     = "mlops-shared"

  validation {
    condition     = can(regex("^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$", var.storage_class_name))
    error_message = "storage_class_name must be a DNS-1123 subdomain (lower-case letters, digits, '-' and '.')."
  }
}

variable "artifact_share" {
  description = <<-EOT
    The one shared filesystem behind the artifact root, mounted by workers, step pods and the model server
    (artifact_store.kind = "share", the default; null with "object_storage"). Set exactly one of:
      nfs       = { server = "nfs.example.internal", path = "/exports/mlops" }  # production: ReadWriteMany
      host_path = "/var/lib/mlops-artifacts"                                  # single-node clusters (kind): ReadWriteOnce
    Both static PersistentVolumes (one per namespace) point at this same share. Prepare its root once:
    owner 1000:1000, mode 2775 (the prepare Job in include/k8s does this).
  EOT
  type = object({
    nfs = optional(object({
      server = string
      path   = string
    }))
    host_path     = optional(string)
    size          = optional(string, "100Gi")
    mount_options = optional(list(string), [])
  })
  default = null

  validation {
    # Cross-variable: needs Terraform >= 1.9 (versions.tf).
    condition     = (var.artifact_share == null) == (var.artifact_store.kind == "object_storage")
    error_message = "artifact_share is the ReadWriteMany share of artifact_store.kind = \"share\" (the default): set it there, and leave it null with artifact_store.kind = \"object_storage\" (the bucket replaces the share)."
  }

  validation {
    condition     = var.artifact_share == null || (try(var.artifact_share.nfs, null) == null) != (try(var.artifact_share.host_path, null) == null)
    error_message = "artifact_share needs exactly one of nfs = { server, path } (a ReadWriteMany share for a real cluster) or host_path (a directory on the node of a single-node cluster such as kind)."
  }

  validation {
    condition     = try(var.artifact_share.nfs, null) == null || (try(length(trimspace(var.artifact_share.nfs.server)), 0) > 0 && startswith(try(var.artifact_share.nfs.path, ""), "/"))
    error_message = "artifact_share.nfs needs a non-empty server and an absolute export path (starting with '/')."
  }

  validation {
    condition     = try(var.artifact_share.host_path, null) == null || startswith(coalesce(try(var.artifact_share.host_path, null), "/"), "/")
    error_message = "artifact_share.host_path must be an absolute path on the node (starting with '/')."
  }

  validation {
    condition     = var.artifact_share == null || can(regex("^[0-9]+(\\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$", try(var.artifact_share.size, "")))
    error_message = "artifact_share.size must be a Kubernetes quantity such as 100Gi or 2Ti."
  }
}

variable "artifact_store" {
  description = <<-EOT
    Where runs/, the model registry (models/), the prediction log and the task logs live.
      kind = "share"           the default: the ReadWriteMany share of artifact_share (on-premises)
      kind = "object_storage"  a bucket, no RWX volume: uri = "s3://<bucket>/<prefix>" (S3 or an S3-compatible store;
                               gs:// is refused: the steps do not support it yet)
    With object_storage: every process gets MLOPS_ARTIFACT_ROOT = uri, task logs go to <uri>/logs (Airflow remote
    logging, Connection aws_default or google_cloud_default), no PV/PVC or share Job is created, and
    service_account_annotations (the cloud identity: {"eks.amazonaws.com/role-arn" = "arn:aws:iam::...:role/..."}
    for IRSA, {"iam.gke.io/gcp-service-account" = "...@....iam.gserviceaccount.com"} for Workload Identity) go on
    the project's ServiceAccounts and the chart's API server and DAG processor ServiceAccounts.  The model server
    then comes from include/k8s/serving/overlays/object-storage (kubectl apply -k), not from this module.
  EOT
  type = object({
    kind                        = optional(string, "share")
    uri                         = optional(string)
    service_account_annotations = optional(map(string), {})
  })
  default = {}

  validation {
    condition     = contains(["share", "object_storage"], var.artifact_store.kind)
    error_message = "artifact_store.kind must be \"share\" (a ReadWriteMany volume, artifact_share) or \"object_storage\" (a bucket, artifact_store.uri)."
  }

  validation {
    # A bucket name (S3 rules, roughly): 3-63 characters of lower-case letters, digits, '.', '-', '_'.
    condition     = var.artifact_store.kind != "object_storage" || can(regex("^s3://[a-z0-9][a-z0-9._-]{1,61}[a-z0-9](/[^/]+)*/?$", coalesce(var.artifact_store.uri, "-")))
    error_message = "artifact_store.uri must be the bucket and an optional prefix, s3://<bucket>/<prefix> (e.g. s3://acme-mlops/prod), when artifact_store.kind is \"object_storage\" (gs:// is not supported yet)."
  }

  validation {
    condition     = var.artifact_store.kind == "object_storage" || (var.artifact_store.uri == null && length(var.artifact_store.service_account_annotations) == 0)
    error_message = "artifact_store.uri and service_account_annotations apply to kind = \"object_storage\" only; the share mode's root is artifact_share."
  }
}

variable "gpu_node_labels" {
  description = "Node labels that select GPU nodes for training steps whose model config names none, e.g. { \"nvidia.com/gpu.present\" = \"true\" }. Passed to the release as MLOPS_K8S_GPU_NODE_SELECTOR (key=value,key=value). Empty: no default node selector."
  type        = map(string)
  default     = {}

  validation {
    # Kubernetes label syntax: optional DNS-subdomain prefix, then a name of at most 63 characters.
    condition     = alltrue([for key in keys(var.gpu_node_labels) : can(regex("^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$", key))])
    error_message = "Each gpu_node_labels key must be a Kubernetes label key (an optional prefix such as nvidia.com/ and a name of letters, digits, '-', '_' and '.')."
  }

  validation {
    # ',' and '=' separate entries in MLOPS_K8S_GPU_NODE_SELECTOR, so they cannot appear in a value.
    condition     = alltrue([for value in values(var.gpu_node_labels) : can(regex("^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$", value))])
    error_message = "Each gpu_node_labels value must be a Kubernetes label value: at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit."
  }
}

variable "secret_names" {
  description = "Existing Secrets in the Airflow namespace (the module creates none, so no credential enters the Terraform state): the metadata DB connection (key `connection`), the Fernet key (`fernet-key`), the JWT signing secret (`jwt-secret`) and the API secret key (`api-secret-key`)."
  type = object({
    metadata_db    = optional(string, "mlops-airflow-metadata")
    fernet_key     = optional(string, "mlops-airflow-fernet-key")
    jwt_secret     = optional(string, "mlops-airflow-jwt-secret")
    api_secret_key = optional(string, "mlops-airflow-api-secret-key")
  })
  default = {}

  validation {
    condition     = alltrue([for name in values(var.secret_names) : can(regex("^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$", name))])
    error_message = "Each secret_names entry must be a Secret name (a DNS-1123 subdomain: lower-case letters, digits, '-' and '.')."
  }
}

variable "release_name" {
  description = "Name of the Helm release of the Airflow chart."
  type        = string
  default     = "airflow"

  validation {
    # The chart prefixes its object names with the release name; Kubernetes caps release names at 53.
    condition     = can(regex("^[a-z0-9]([-a-z0-9]{0,51}[a-z0-9])?$", var.release_name))
    error_message = "release_name must be a lower-case DNS-1123 label of at most 53 characters."
  }
}

variable "extra_helm_values" {
  description = "More values documents (YAML strings) for the Airflow release, applied after include/k8s/helm/values.yaml and before the module's own overrides."
  type        = list(string)
  default     = []
}

variable "model_server_image" {
  description = "Replaces the model server's image (e.g. a mirror of tensorflow/serving in a private registry). null keeps the image pinned in include/k8s/serving."
  type        = string
  default     = null

  validation {
    condition     = var.model_server_image == null || can(regex("^[^\\s]+(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}|@sha256:[a-f0-9]{64})$", coalesce(var.model_server_image, "x:y")))
    error_message = "model_server_image must carry a tag or a digest (name:tag or name@sha256:...)."
  }
}

variable "install_service_monitor" {
  description = "Create the Prometheus Operator ServiceMonitor for the model server. Needs the monitoring.coreos.com CRDs in the cluster before `terraform plan` (kube-prometheus-stack)."
  type        = bool
  default     = false
}

variable "gpu_quota" {
  description = "Most GPUs that step pods may request at once in the steps namespace (a ResourceQuota). null: no quota."
  type        = number
  default     = null

  validation {
    condition     = var.gpu_quota == null || try(var.gpu_quota >= 0 && floor(var.gpu_quota) == var.gpu_quota, false)
    error_message = "gpu_quota must be a whole number of GPUs (0 or more), or null for no quota."
  }
}

variable "cluster_domain" {
  description = "The cluster's DNS domain, used in the model server URL given to Airflow."
  type        = string
  default     = "cluster.local"

  validation {
    condition     = can(regex("^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$", var.cluster_domain)) && try(length(var.cluster_domain) <= 253, false)
    error_message = "cluster_domain must be the cluster's DNS domain, e.g. cluster.local (lower-case DNS labels separated by '.', not empty): the model server URL is http://mlops-model-server.<steps namespace>.svc.<cluster_domain>:8501."
  }
}

variable "helm_timeout_seconds" {
  description = "How long Terraform waits for the Airflow release to become ready (database migrations included)."
  type        = number
  default     = 900

  validation {
    condition     = try(var.helm_timeout_seconds > 0 && floor(var.helm_timeout_seconds) == var.helm_timeout_seconds, false)
    error_message = "helm_timeout_seconds must be a whole number of seconds greater than 0 (the default, 900, leaves room for the database migrations)."
  }
}

variable "image_pull_secret" {
  description = "The docker-registry Secret that every pod pulling a project image uses, in both namespaces (create it yourself, as for the chart's Secrets): set on the project's ServiceAccounts and pod templates and as the release's registry.secretName (chart pods, and step pods through MLOPS_K8S_IMAGE_PULL_SECRETS). The default is the name include/k8s and values.yaml use; a missing Secret only produces a warning event. null: no pull secret anywhere."
  type        = string
  default     = "mlops-registry"

  validation {
    condition     = var.image_pull_secret == null || can(regex("^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$", coalesce(var.image_pull_secret, "x")))
    error_message = "image_pull_secret must be a Secret name (a DNS-1123 subdomain: lower-case letters, digits, '-' and '.'), or null for none."
  }
}

variable "service_monitor_labels" {
  description = "Labels of the model server's ServiceMonitor (with install_service_monitor), so that your Prometheus selects it: kube-prometheus-stack selects release = <its Helm release name>. They replace the manifest's `release` label."
  type        = map(string)
  default     = { release = "kube-prometheus-stack" }

  validation {
    condition     = alltrue([for key in keys(var.service_monitor_labels) : can(regex("^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$", key))]) && alltrue([for value in values(var.service_monitor_labels) : can(regex("^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$", value))])
    error_message = "service_monitor_labels must be Kubernetes labels: keys such as release or example.com/team, values of at most 63 letters, digits, '-', '_' or '.'."
  }
}
