"""Loading registry versions and hot-swapping them as TF Serving's model config file changes.

The server serves what ``models/models.config`` asks for, with TF Serving's
semantics: each ``model_config_list`` entry names a model, a version policy
(``specific`` versions, ``latest`` N, or ``all``) and ``version_labels``.

Switching is load-then-swap.  A reload builds a complete new
:class:`ServingState` beside the current one: versions that are already
loaded are reused, new ones are checksum-verified (``Registry.verify``) and
loaded first, and only then is the state replaced by one reference
assignment.  A request reads the state once, so it runs entirely on the old
or entirely on the new state, and nothing it holds is unloaded under it.  A
version that fails to load (corrupt, not a SavedModel) is reported in the
status API with its error, and a label that asks for it keeps pointing at the
version it pointed at before, which stays loaded: a bad deploy never takes the
model down.

That is the ``default`` behaviour.  :mod:`include.mlops.serving.tfserving_mode`
is the ``tfserving`` one, which does what TF Serving does where this one is
kinder; both publish a :class:`ServingState` built from the same parts.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from include.mlops.registry.filesystem import CorruptVersionError, Registry
from include.mlops.registry.protocol import ModelRegistry
from include.mlops.serving.canary_weights import CANARY, TRACKS, CanaryRoute, RouteWeights, applied_weights
from include.mlops.serving.loaders import LoadedVersion, TensorSpecInfo, load_version
from include.mlops.serving.metrics import ServingMetrics

__all__ = ["LoadedVersion", "ModelManager", "ServingError", "ServingState", "TensorSpecInfo"]

log = logging.getLogger(__name__)

DEFAULT_SIGNATURE = "serving_default"
# Label-less requests are answered by this label's version while the model has it (see ServingState.resolve).
DEFAULT_LABEL = "stable"

# The server's behaviours: its own (kinder) one, and TF Serving's.
DEFAULT_BEHAVIOUR = "default"
TFSERVING_BEHAVIOUR = "tfserving"
BEHAVIOURS = (DEFAULT_BEHAVIOUR, TFSERVING_BEHAVIOUR)
# Where the CLI reads its default behaviour from.
BEHAVIOUR_ENV = "MLOPS_SERVER_BEHAVIOUR"

# TF Serving's ModelVersionStatus.State names.
AVAILABLE = "AVAILABLE"
END = "END"
LOADING = "LOADING"


class ServingError(Exception):
    """A request cannot be served; ``code`` is the TF error code name that TF Serving would return."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def not_found(message: str) -> ServingError:
    return ServingError("NOT_FOUND", message)


def invalid(message: str) -> ServingError:
    return ServingError("INVALID_ARGUMENT", message)


@dataclasses.dataclass(frozen=True)
class VersionStatus:
    version: int
    state: str
    error_code: str = "OK"
    error_message: str = ""


@dataclasses.dataclass(frozen=True)
class ModelState:
    name: str
    versions: Mapping[int, LoadedVersion]
    labels: Mapping[str, int]
    statuses: Mapping[int, VersionStatus]

    def requested_version(self, version: int | None, label: str | None) -> int | None:
        """The version a request names through ``version`` or ``label`` (None: neither was given)."""
        if version is not None and label is not None:
            raise invalid(f"Both model version ({version}) and model version label ({label}) cannot be supplied.")
        if label is None:
            return version
        target = self.labels.get(label)
        if target is None:
            # TF Serving's ServerCore answers an unknown label with INVALID_ARGUMENT (400), not NOT_FOUND.
            raise invalid(f"Unrecognized servable version label: {label}")
        return target


@dataclasses.dataclass(frozen=True)
class ServingState:
    """An immutable snapshot of everything served; replaced whole on every reload."""

    models: Mapping[str, ModelState]
    # Answers requests that name no version or label while the model has it; None: the highest loaded version.
    default_label: str | None = DEFAULT_LABEL
    # TF Serving's status API reads only a version from the request (GetModelStatusImpl), so a label there
    # is ignored and every version is listed.
    status_ignores_labels: bool = False
    # The canary routes that apply, by model (include.mlops.serving.route reads them per request).
    routes: Mapping[str, CanaryRoute] = dataclasses.field(default_factory=dict)

    def model(self, name: str) -> ModelState:
        model = self.models.get(name)
        if model is None:
            raise not_found(f"Servable not found for request: Latest({name})")
        return model

    def resolve(self, name: str, version: int | None = None, label: str | None = None) -> LoadedVersion:
        """The loaded version a request names: a version, a label, or (neither) the default one.

        By default that is the ``stable`` label's version while the model has
        one; without it (or with ``default_label`` None, as TF Serving does)
        the highest loaded version.  Deploy preloads a candidate before it
        moves a label, so "highest loaded" hands unverified versions to
        label-less clients.
        """
        model = self.model(name)
        version = model.requested_version(version, label)
        if version is None and self.default_label is not None:
            version = model.labels.get(self.default_label)
        if version is not None:
            loaded = model.versions.get(version)
            if loaded is None:
                raise not_found(f"Servable not found for request: Specific({name}, {version})")
            return loaded
        if not model.versions:
            raise not_found(f"Servable not found for request: Latest({name})")
        return model.versions[max(model.versions)]

    def version_statuses(self, name: str, version: int | None = None, label: str | None = None) -> list[VersionStatus]:
        """What the status API lists for a request, highest version first (TF Serving's order)."""
        model = self.models.get(name)
        if model is None:
            raise not_found(f"Could not find any versions of model {name}")
        if self.status_ignores_labels and version is None:
            label = None
        version = model.requested_version(version, label)
        statuses = list(model.statuses.values())
        if version is not None:
            statuses = [s for s in statuses if s.version == version]
            if not statuses:
                raise not_found(f"Could not find version {version} of model {name}")
        if not statuses:
            raise not_found(f"Could not find any versions of model {name}")
        return sorted(statuses, key=lambda s: s.version, reverse=True)


class ModelManager:
    """Keeps the served models in step with the registry's ``models.config``.

    ``poll_seconds`` is how often the config file's mtime is checked (TF
    Serving's ``--model_config_file_poll_wait_seconds``).  ``loader`` is the
    function that loads one version (replaceable for tests of the swap logic).
    """

    def __init__(
        self,
        registry_root: str | os.PathLike[str],
        *,
        metrics: ServingMetrics | None = None,
        poll_seconds: float = 1.0,
        verify_checksums: bool = True,
        loader: Callable[[str, int, Path], LoadedVersion] = load_version,
    ) -> None:
        self.registry: ModelRegistry = Registry(registry_root)
        self.metrics = metrics or ServingMetrics()
        self.poll_seconds = poll_seconds
        self.verify_checksums = verify_checksums
        self._loader = loader
        self._state = ServingState(models={})
        self._reload_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._seen: tuple[Any, ...] | None = None
        # Versions that failed to load, by (name, version): not retried until the config changes.
        self._failed: dict[tuple[str, int], VersionStatus] = {}
        self._route_weights = RouteWeights(self.registry.model_dir)

    @property
    def state(self) -> ServingState:
        """The current snapshot; read it once per request."""
        return self._state

    # ------------------------------------------------------------------ polling

    def start(self) -> None:
        """Load what the config asks for now, then watch it in a background thread."""
        self.reload()
        self._thread = threading.Thread(target=self._poll, name="model-config-poller", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _poll(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            try:
                self.refresh_routes()
                if self._fingerprint() != self._seen:
                    self.reload()
            except Exception:  # keep polling: a broken config must not stop later fixes from loading
                log.exception("Reloading %s failed; still serving the previous models", self.registry.config_path)

    def refresh_routes(self) -> None:
        """Re-read the models' route.json (every poll); publish the state again when a weight changed."""
        with self._reload_lock:
            if self._route_weights.changed(self._state.models):
                self._publish(self._state)

    def _fingerprint(self) -> tuple[Any, ...]:
        """What a reload depends on: the config file's identity and, for non-specific policies, the versions on disk."""
        try:
            stat = self.registry.config_path.stat()
            config_id: tuple[Any, ...] = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        except FileNotFoundError:
            config_id = ()
        dynamic = []
        for name in sorted(self._state.models):
            dynamic.append((name, tuple(self.registry.versions(name))))
        return (config_id, tuple(dynamic))

    # ------------------------------------------------------------------ reload

    def reload(self) -> ServingState:
        """Read models.config, load what is new, then swap the state in one assignment."""
        with self._reload_lock:
            fingerprint = self._fingerprint()
            config_changed = self._seen is None or fingerprint[0] != self._seen[0]
            if config_changed:
                self._failed.clear()
            config = self.registry.read_serving_config()
            current = self._state
            models: dict[str, ModelState] = {}
            for entry in config.model_config_list.config:
                models[entry.name] = self._build_model(entry, current.models.get(entry.name))
            self._publish(ServingState(models=models))
            # The fingerprint from BEFORE the read: a write during the (slow) load then differs from it,
            # so the next poll applies that write instead of taking it as already seen.
            self._seen = fingerprint
            return self._state

    def _publish(self, state: ServingState) -> None:
        """Serve ``state`` (with the canary routes of route.json now) from now on and bring the metrics in line."""
        state = dataclasses.replace(state, routes=self._route_weights.routes(state.models))
        current, self._state = self._state, state
        models = state.models
        self.metrics.set_canary_weights(applied_weights(models, state.routes))
        self.metrics.route.init((name for name, model in models.items() if CANARY in model.labels), TRACKS)
        self.metrics.set_served_artifacts(
            (name, loaded.version, loaded.artifact.format, loaded.sha256)
            for name, model in models.items()
            for loaded in model.versions.values()
        )
        self.metrics.init_models(models)
        self.metrics.set_served_versions(
            (name, label, version)
            for name, model in models.items()
            for label, version in model.labels.items()
            if version in model.versions
        )
        for name, old in current.models.items():
            kept = models[name].versions if name in models else {}
            for version in old.versions:
                if version not in kept:
                    log.info("Unloaded %s version %d", name, version)

    def _wanted_versions(self, entry: Any) -> list[int]:
        on_disk = self.registry.versions(entry.name)
        policy = entry.model_version_policy
        which = policy.WhichOneof("policy_choice")
        if which == "specific":
            return sorted(set(policy.specific.versions))
        if which == "all":
            return on_disk
        count = policy.latest.num_versions if which == "latest" and policy.latest.num_versions > 0 else 1
        return on_disk[-count:]

    def _build_model(self, entry: Any, previous: ModelState | None) -> ModelState:
        name = entry.name
        wanted = self._wanted_versions(entry)
        old_versions = dict(previous.versions) if previous is not None else {}
        versions: dict[int, LoadedVersion] = {}
        statuses: dict[int, VersionStatus] = {}
        for version in wanted:
            if version in old_versions:
                versions[version] = old_versions[version]
                statuses[version] = VersionStatus(version, AVAILABLE)
                continue
            failed = self._failed.get((name, version))
            if failed is not None:
                statuses[version] = failed
                continue
            loaded, status = self._load(name, version)
            statuses[version] = status
            if loaded is not None:
                versions[version] = loaded
            else:
                self._failed[(name, version)] = status

        labels: dict[str, int] = {}
        old_labels = dict(previous.labels) if previous is not None else {}
        for label, version in entry.version_labels.items():
            if version in versions:
                labels[label] = version
                continue
            # The label asks for a version that did not load: keep serving what it named before.
            before = old_labels.get(label)
            if before is not None and before in old_versions:
                versions.setdefault(before, old_versions[before])
                statuses.setdefault(before, VersionStatus(before, AVAILABLE))
                labels[label] = before
                log.error(
                    "%s: label %r asks for version %d, which is not available (%s); it stays on version %d",
                    name, label, version, statuses.get(version, VersionStatus(version, END)).error_message, before,
                )  # fmt: skip
            else:
                log.error(
                    "%s: label %r asks for version %d, which is not available; label not served", name, label, version
                )
        # Versions that were loaded before but are no longer wanted are reported as unloaded.
        for version in old_versions:
            if version not in versions and version not in statuses:
                statuses[version] = VersionStatus(version, END)
        return ModelState(name=name, versions=versions, labels=labels, statuses=dict(sorted(statuses.items())))

    def _version_path(self, name: str, version: int) -> Path:
        """The version's folder: ``<name>/<version>/``, or a zero-padded one (``<name>/00000123/``).

        TF Serving reads a version folder's name as an integer, so its own layout pads them;
        the registry writes plain numbers.
        """
        path = self.registry.version_dir(name, version)
        if path.is_dir():
            return path
        base = self.registry.model_dir(name)
        padded = sorted(p for p in base.glob("0*") if p.is_dir() and p.name.isdigit() and int(p.name) == version)
        return padded[0] if padded else path

    def _load(self, name: str, version: int) -> tuple[LoadedVersion | None, VersionStatus]:
        path = self._version_path(name, version)
        start = time.perf_counter()
        try:
            if not path.is_dir():
                raise FileNotFoundError(f"{path} does not exist")
            if self.verify_checksums and path.name != str(version):
                raise CorruptVersionError(
                    name,
                    version,
                    [
                        f"{path.name} is not a registry folder, so it has no checksums to verify; serve a TF Serving "
                        "model base path with --no-verify-checksums"
                    ],
                )
            if self.verify_checksums:
                self.registry.verify(name, version)
            log.info("Loading %s version %d from %s", name, version, path)
            loaded = self._loader(name, version, path)
        except CorruptVersionError as exc:
            self.metrics.record_load(str(path), False, 0)
            log.error("Refusing to load %s version %d: %s", name, version, exc)
            return None, VersionStatus(version, END, "DATA_LOSS", str(exc))
        except FileNotFoundError as exc:
            self.metrics.record_load(str(path), False, 0)
            log.error("Cannot load %s version %d: %s", name, version, exc)
            return None, VersionStatus(version, END, "NOT_FOUND", str(exc))
        except Exception as exc:
            self.metrics.record_load(str(path), False, 0)
            log.exception("Loading %s version %d failed", name, version)
            return None, VersionStatus(version, END, "UNKNOWN", f"{type(exc).__name__}: {exc}")
        micros = (time.perf_counter() - start) * 1e6
        self.metrics.record_load(str(path), True, micros)
        log.info("Loaded %s version %d in %.2f s", name, version, micros / 1e6)
        return loaded, VersionStatus(version, AVAILABLE)
