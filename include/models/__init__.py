"""Model configs (``*.yaml``) and their Keras builders (``<builder>.py``)."""
