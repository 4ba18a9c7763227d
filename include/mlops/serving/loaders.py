"""Loading one registry version for serving: its SavedModel, or its ``model.tflite`` when it has one.

Which of the two serves a version is decided by
:func:`include.mlops.registry.serving_artifact.served_artifact` (the rule deploy
verifies against too), unless the caller does not prefer TFLite: then the
SavedModel serves even beside a ``model.tflite``, as in TF Serving without
``--prefer_tflite_model``.  Either way the result is a :class:`LoadedVersion`
whose ``run`` takes numpy feeds by signature input name and returns numpy
outputs by name, and whose ``sha256`` names the bytes that answer requests
(exported as ``mlops_served_artifact_info``).  The metadata API always
describes the SavedModel's signatures, as TF Serving does.

TensorFlow is imported inside the loaders, not at module import.
"""

from __future__ import annotations

import dataclasses
import hashlib
import threading
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from include.mlops.registry.filesystem import RegistryError
from include.mlops.registry.serving_artifact import SAVED_MODEL, TFLITE, ServedArtifact, served_artifact

if TYPE_CHECKING:
    import numpy as np

RunFn = Callable[[str, Mapping[str, "np.ndarray"]], dict[str, "np.ndarray"]]


@dataclasses.dataclass(frozen=True)
class TensorSpecInfo:
    """What a request must send for one signature input: dtype kind and shape."""

    name: str
    dtype: str  # numpy dtype name, e.g. "float32"
    shape: tuple[int | None, ...] | None  # None: unknown rank (e.g. a serialized tf.Example batch)


@dataclasses.dataclass
class LoadedVersion:
    """One loaded version, its signatures ready to call."""

    name: str
    version: int
    path: Path  # the version folder
    artifact: ServedArtifact  # what answers requests: the SavedModel or model.tflite
    sha256: str  # of the served bytes (ServedArtifact.sha256's definition)
    inputs: dict[str, dict[str, TensorSpecInfo]]  # signature -> input name -> spec
    outputs: dict[str, list[str]]  # signature -> output names (sorted)
    signature_def_map: Any  # tensorflow.serving.SignatureDefMap for the metadata API
    runner: RunFn
    handle: Any  # keeps the loaded object (and its variables) alive
    # What the request path works out once per version rather than per request: signature -> its set-up
    # (``include.mlops.serving.predict_json.SignaturePlan``), built on first use.  A reload keeps a loaded
    # version's object, so its set-up; a new version is a new object, with its own.
    plans: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False, compare=False)
    # How long the version's small predicts take, for ``include.mlops.serving.workers.InlineGate``: how many
    # were timed, and their moving average (µs).
    small_calls: int = dataclasses.field(default=0, repr=False, compare=False)
    small_call_micros: float = dataclasses.field(default=0.0, repr=False, compare=False)
    # Calls to the version now running in a worker thread (counted on the event loop; see InlineGate.allows).
    worker_calls: int = dataclasses.field(default=0, repr=False, compare=False)

    def run(self, signature: str, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.runner(signature, feeds)


def load_version(name: str, version: int, path: Path, *, prefer_tflite: bool = True) -> LoadedVersion:
    """Load the artifact that serves the version folder ``path`` (the server's default loader).

    ``prefer_tflite`` False loads the SavedModel even where ``model.tflite`` lies beside it.
    """
    artifact = served_artifact(path) if prefer_tflite else ServedArtifact(SAVED_MODEL, Path(path))
    if artifact.format == TFLITE:
        loaded = _load_tflite(name, version, path, artifact)
    else:
        loaded = _load_saved_model(name, version, path, artifact)
    _warm_up(loaded)
    return loaded


def _warm_up(loaded: LoadedVersion) -> None:
    """Replay the version's TF Serving warmup requests, as TF Serving does before a version is AVAILABLE.

    A request that fails fails the load (TF Serving's ``RunSavedModelWarmup``).
    """
    from include.mlops.training.savedmodel import INPUT_NAME, SIGNATURE_KEY
    from include.mlops.training.warmup import read_warmup_inputs

    try:
        for inputs in read_warmup_inputs(loaded.path):
            loaded.run(SIGNATURE_KEY, {INPUT_NAME: inputs})
    except Exception as exc:
        raise RegistryError(f"{loaded.name} version {loaded.version}: its warmup requests failed: {exc}") from exc


def _signature_def_map(path: Path) -> Any:
    """The SavedModel's signature defs as TF Serving's metadata API prints them."""
    from tensorflow.core.protobuf import saved_model_pb2
    from tensorflow_serving.apis import get_model_metadata_pb2

    sig_map = get_model_metadata_pb2.SignatureDefMap()
    pb = path / "saved_model.pb"
    if not pb.is_file():
        return sig_map
    saved = saved_model_pb2.SavedModel()
    saved.ParseFromString(pb.read_bytes())
    for graph in saved.meta_graphs:
        if "serve" in graph.meta_info_def.tags or len(saved.meta_graphs) == 1:
            for key, value in graph.signature_def.items():
                sig_map.signature_def[key].CopyFrom(value)
            break
    return sig_map


def _shape(shape: Any) -> tuple[int | None, ...] | None:
    """A TensorShape as a tuple (None for unknown dims), or None when even its rank is unknown."""
    return None if shape.rank is None else tuple(shape.as_list())


def _load_saved_model(name: str, version: int, path: Path, artifact: ServedArtifact) -> LoadedVersion:
    import tensorflow as tf

    loaded = tf.saved_model.load(str(path))
    if not loaded.signatures:
        raise RegistryError(f"{path} has no serving signatures; export it with a serving_default signature")
    signatures: dict[str, Callable[..., Any]] = {}
    inputs: dict[str, dict[str, TensorSpecInfo]] = {}
    outputs: dict[str, list[str]] = {}
    for key, fn in loaded.signatures.items():
        _, kwargs = fn.structured_input_signature
        inputs[key] = {
            arg: TensorSpecInfo(arg, spec.dtype.as_numpy_dtype.__name__, _shape(spec.shape))
            for arg, spec in kwargs.items()
        }
        outputs[key] = sorted(fn.structured_outputs)
        signatures[key] = fn

    def run(signature: str, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        result = signatures[signature](**{key: tf.constant(value) for key, value in feeds.items()})
        return {key: value.numpy() for key, value in result.items()}

    sig_map = _signature_def_map(path)
    return LoadedVersion(name, version, path, artifact, artifact.sha256, inputs, outputs, sig_map, run, loaded)


def _load_tflite(name: str, version: int, path: Path, artifact: ServedArtifact) -> LoadedVersion:
    import numpy as np
    import tensorflow as tf

    # Hash the very bytes handed to the interpreter, so the exported sha256 is what serves.
    content = artifact.path.read_bytes()
    with warnings.catch_warnings():
        # tf.lite.Interpreter warns of its deprecation (in favour of LiteRT) on every construction.
        warnings.simplefilter("ignore", UserWarning)
        interpreter = tf.lite.Interpreter(model_content=content)
    signature_list = interpreter.get_signature_list()
    if not signature_list:
        raise RegistryError(f"{artifact.path} has no signatures; convert it with TFLiteConverter.from_saved_model")
    runners: dict[str, Any] = {}
    inputs: dict[str, dict[str, TensorSpecInfo]] = {}
    outputs: dict[str, list[str]] = {}
    for key, names in signature_list.items():
        runner = interpreter.get_signature_runner(key)
        inputs[key] = {
            arg: TensorSpecInfo(
                arg, np.dtype(detail["dtype"]).name, tuple(None if d < 0 else int(d) for d in detail["shape_signature"])
            )
            for arg, detail in runner.get_input_details().items()
        }
        outputs[key] = sorted(names["outputs"])
        runners[key] = runner
    # An Interpreter holds its tensors in place and is not thread-safe: one call at a time.
    lock = threading.Lock()

    def run(signature: str, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        # The interpreter reports a wrong shape only as a RuntimeError from deep inside (and keeps that text
        # for the next call), so the request is checked against the signature here, as a client error.
        for arg, array in feeds.items():
            spec = inputs[signature].get(arg)
            if spec is not None and not _shape_fits(array.shape, spec.shape):
                raise ValueError(
                    f"input '{arg}' has shape {list(array.shape)}, but the model takes "
                    f"{[-1 if d is None else d for d in spec.shape]} (-1: any size)"
                )
        with lock:
            # The runner resizes its inputs to the batch it gets and returns copies of the outputs.
            return dict(runners[signature](**feeds))

    sig_map = _signature_def_map(path)
    digest = hashlib.sha256(content).hexdigest()
    return LoadedVersion(name, version, path, artifact, digest, inputs, outputs, sig_map, run, interpreter)


def _shape_fits(shape: tuple[int, ...], signature: tuple[int | None, ...]) -> bool:
    """``shape`` has the signature's rank and its size wherever the signature fixes one."""
    return len(shape) == len(signature) and all(
        want is None or got == want for got, want in zip(shape, signature, strict=False)
    )
