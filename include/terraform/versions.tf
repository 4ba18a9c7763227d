# Terraform >= 1.9 (optional() object attributes with defaults, provider-defined functions for callers, and
# validation across variables: artifact_share against artifact_store).
# Providers are pinned to a major version: helm 3.x takes `set` as a list of objects (2.x used blocks), and
# kubernetes 3.x is the release line built against Kubernetes 1.33, the version the manifests target.
terraform {
  required_version = ">= 1.9"

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
