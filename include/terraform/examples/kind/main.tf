# The whole stack on a local kind cluster (one node), where a directory on the node stands in for the NFS share.
#   kind create cluster
#   docker exec kind-control-plane sh -c 'mkdir -p /var/local/mlops-artifacts && chown 1000:1000 /var/local/mlops-artifacts && chmod 2775 /var/local/mlops-artifacts'
#   kind load docker-image <each of the project's images>
#   terraform init
#   terraform apply -target=module.mlops.kubernetes_namespace_v1.airflow   # the namespace for the Secrets
#   kubectl -n mlops create secret generic ...                             # the four Secrets: ../../README.md
#   terraform apply
terraform {
  required_version = ">= 1.8"

  required_providers {
    kubernetes = {
      source  = "hashicorp/kubernetes"
      version = "~> 3.0"
    }
    helm = {
      source  = "hashicorp/helm"
      version = "~> 3.0"
    }
  }
}

variable "kubeconfig" {
  description = "Path of the kubeconfig that `kind create cluster` wrote."
  type        = string
  default     = "~/.kube/config"
}

variable "kube_context" {
  description = "The kind cluster's context (kind-<cluster name>)."
  type        = string
  default     = "kind-kind"
}

provider "kubernetes" {
  config_path    = pathexpand(var.kubeconfig)
  config_context = var.kube_context
}

provider "helm" {
  kubernetes = {
    config_path    = pathexpand(var.kubeconfig)
    config_context = var.kube_context
  }
}

module "mlops" {
  source = "../.."

  image = {
    repository = "registry.example.com/airflow-tf-lifecycle"
    tag        = "0.1.0"
  }
  # One node: a directory on it stands in for the NFS share (prepared as above; the same folder as
  # include/k8s/overlays/kind).
  artifact_share = {
    host_path = "/var/local/mlops-artifacts"
    size      = "10Gi"
  }
  # kind has no GPU nodes; on a GPU cluster, e.g. { "nvidia.com/gpu.present" = "true" }.
  gpu_node_labels = {}
  # kind's only storage class is ReadWriteOnce, and the chart's log volume asks for ReadWriteMany: here task
  # logs stay in the worker pods. Anywhere you keep logs, use an RWX class or remote logging instead.
  extra_helm_values = [yamlencode({ logs = { persistence = { enabled = false } } })]
}

output "namespaces" {
  value = module.mlops.namespaces
}

output "model_server_url" {
  value = module.mlops.model_server_url
}
