"""Monitor what is deployed: SLOs from Prometheus, input drift against the training reference, traffic."""
