"""Stage 4, registry: keep every gated version, with its evidence, as TF Serving's model base path.

``protocol`` is the registry's interface (``ModelRegistry``) that steps, the model server and the Models
view depend on; ``filesystem`` implements it over a local or mounted folder (versions, labels in
``models.config`` via ``model_config_file``, version metadata and checksums via ``version_files``).
``register`` adds a gated candidate with its metrics, lineage and ``model_card``; ``fingerprint`` says what
made a candidate, so that one identical to the champion is not registered again; ``serving_artifact``
says which bytes a version serves; ``catalog`` (with ``run_folders``) and ``quality_history`` read it all
back for the Models view.  Hands the deploy stage a registered, checksummed version number.
"""
