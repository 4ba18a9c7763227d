"""Model configs (``*.yaml``) and their Keras builders (``<builder>.py``).

Builders use ``tf.keras`` (not ``import keras``): every step gets Keras 3 models from
them, and the compression step's TFMOT process (``TF_USE_LEGACY_KERAS=1``) gets tf_keras
models from the same code.
"""
