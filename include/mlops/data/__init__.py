"""Stage 1, data: land a run's rows and prove them fit to train on.

``sources`` reads the configured dataset for a data interval, ``snapshot`` writes it as the run's
``data.parquet`` with a manifest, and ``validate`` runs the model's Great Expectations suite (generated
once by ``suites``) on it.  Hands the training stage a validated snapshot.
"""
