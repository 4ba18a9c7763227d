"""Stage 4, registry: keep every gated version, with its evidence, as TF Serving's model base path.

``filesystem`` is the registry over a local or mounted folder (versions, labels in ``models.config``);
``register`` adds a gated candidate with its metrics, lineage and ``model_card``; ``serving_artifact``
says which bytes a version serves; ``catalog`` and ``quality_history`` read it all back for the Models
view.  Hands the deploy stage a registered, checksummed version number.
"""
