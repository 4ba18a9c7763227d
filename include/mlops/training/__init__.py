"""Stage 2, training: fit the model's Keras network on a validated snapshot and export it.

``train`` fits under ``MirroredStrategy`` with fixed seeds; ``modeling`` holds what train, evaluate and
optimize share (loading a snapshot into arrays, the builder, SavedModel export and its contract, TFLite).
Hands the evaluation stage a SavedModel folder with the serving signature.
"""
