"""Stage 2, training: fit the model's Keras network on a validated snapshot and export it.

``train`` fits under ``MirroredStrategy`` with fixed seeds.  What train, evaluate and optimize share:
``datasets`` (a snapshot as arrays), ``modeling`` (the builder, hyperparameters, seeds) and ``savedmodel``
(the serving contract, SavedModel export and loading, TFLite).
Hands the evaluation stage a SavedModel folder with the serving signature.
"""
