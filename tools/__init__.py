"""Checks for the project's deployables, run by the tests and by hand; not part of the lifecycle library.

``python -m tools.pod_security FILE_OR_DIR...`` checks rendered Kubernetes manifests against the Pod
Security Standards.  Nothing under ``include/`` imports this package, so the runtime images do not ship it.
"""
