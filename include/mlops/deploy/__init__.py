"""Stage 5, deploy: put a registered version into service, verified through the model server.

``deploy`` moves a serving label as a transaction (checksums, load, smoke check, roll back on failure);
``server_client`` is the few TF Serving REST calls it needs.  ``canary_metrics``, ``canary_analysis``
and ``canary_progress`` measure, judge and step a canary from Prometheus (docs/delivery.md).  Hands
the monitoring stage a label that names a verified version.
"""
