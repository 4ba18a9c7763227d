"""TF Serving warmup requests, written with each exported SavedModel.

TF Serving replays ``assets.extra/tf_serving_warmup_requests`` (a TFRecord of
``PredictionLog`` messages) when it loads a version, before the version is
AVAILABLE, so that the first user request does not pay for graph
initialisation; a request that fails the replay fails the load.  The project's
server replays the same file (:func:`read_warmup_inputs`).  The requests are a
few of the model's own training rows, one batch of one row and one of
:data:`WARMUP_ROWS`, on the serving contract's ``serving_default`` signature.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from include.mlops.training.savedmodel import INPUT_NAME, SIGNATURE_KEY

if TYPE_CHECKING:
    import numpy as np

WARMUP_FILE = "tf_serving_warmup_requests"  # under assets.extra/, the name TF Serving looks for
WARMUP_ROWS = 8


def warmup_path(saved_model_dir: str | os.PathLike[str]) -> Path:
    return Path(saved_model_dir) / "assets.extra" / WARMUP_FILE


def write_warmup_requests(saved_model_dir: str | os.PathLike[str], rows: np.ndarray) -> Path:
    """Write warmup requests for ``rows`` (float32 [n, features]) into the SavedModel folder."""
    import numpy as np
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    rows = np.asarray(rows, dtype=np.float32)
    if rows.ndim != 2 or len(rows) == 0:
        raise ValueError(f"warmup rows must be a non-empty [n, features] array, got shape {list(rows.shape)}")
    path = warmup_path(saved_model_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for batch in (rows[:1], rows[:WARMUP_ROWS]):
            request = predict_pb2.PredictRequest()
            request.model_spec.signature_name = SIGNATURE_KEY
            request.inputs[INPUT_NAME].CopyFrom(tf.make_tensor_proto(batch))
            log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())
    return path


def read_warmup_inputs(saved_model_dir: str | os.PathLike[str]) -> list[np.ndarray]:
    """The ``inputs`` of each warmup request in the folder (empty when it has no warmup file).

    Raises ``ValueError`` for a record that is not a predict log with the
    contract's input, as TF Serving fails such a load.
    """
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    path = warmup_path(saved_model_dir)
    if not path.is_file():
        return []
    inputs = []
    for record in tf.data.TFRecordDataset(str(path)).as_numpy_iterator():
        log = prediction_log_pb2.PredictionLog.FromString(record)
        if log.WhichOneof("log_type") != "predict_log" or INPUT_NAME not in log.predict_log.request.inputs:
            raise ValueError(f"{path}: a warmup record is not a predict request with input {INPUT_NAME!r}")
        inputs.append(tf.make_ndarray(log.predict_log.request.inputs[INPUT_NAME]))
    return inputs
