"""The ``tfserving`` behaviour: the model config file applied the way TF Serving applies it.

The default behaviour (:class:`include.mlops.serving.models.ModelManager`) is
kinder than TF Serving in several places.  This one does what TF Serving's
source does (``model_servers/server_core.cc`` and ``server.cc``,
``core/availability_preserving_policy.cc``, ``core/servable_state_monitor.h``,
``sources/storage_path/file_system_storage_path_source.cc``):

- The config file is read every ``poll_seconds`` (``--model_config_file_poll_wait_seconds``)
  and at no other time; with 0 it is read once, at start.  The version folders
  are listed every ``file_system_poll_seconds`` (``--file_system_poll_wait_seconds``)
  for the config last applied.
- A config is refused whole when one of its labels names a version that is not
  AVAILABLE at that moment (``ServerCore::UpdateModelVersionLabelMap`` runs
  before the config's new versions load): every model keeps the versions and
  labels it had, and the file is tried again at every poll.  With
  ``allow_version_labels_for_unavailable_models`` such a label passes when it is
  new or stays on its version, never when it moves.  Nothing is loaded at start,
  so a config with labels starts only with that flag, and the server does not
  start when a model gets no AVAILABLE version.
- The version policy alone decides what is loaded: ``specific`` versions whose
  folders exist (a missing one is not listed at all), the ``latest`` N, or
  ``all``.  A label keeps nothing loaded; through a label whose version is not
  loaded, requests are NOT_FOUND.  A version the policy drops is unloaded once an
  asked-for version is AVAILABLE; while none is, the highest old one stays
  (``AvailabilityPreservingPolicy``).
- Requests without a version or label get the highest loaded version.
- The status API lists every version the server has seen with its last state:
  ``LOADING`` while it loads, ``AVAILABLE``, ``END`` once unloaded, ``END`` with
  the error when its load failed.  A label in a status request is ignored.
- ``model.tflite`` serves only with ``prefer_tflite_model`` (``--prefer_tflite_model``).
"""

from __future__ import annotations

import functools
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from include.mlops.registry.protocol import RegistryError
from include.mlops.serving.loaders import LoadedVersion, load_version
from include.mlops.serving.metrics import ServingMetrics
from include.mlops.serving.models import (
    BEHAVIOURS,
    END,
    LOADING,
    TFSERVING_BEHAVIOUR,
    ModelManager,
    ModelState,
    ServingState,
    VersionStatus,
)

__all__ = ["ServerStartError", "TFServingModelManager", "create_model_manager"]

log = logging.getLogger(__name__)


class ServerStartError(RuntimeError):
    """TF Serving would not start with this config (it exits; so does this server)."""


class TFServingModelManager(ModelManager):
    """Keeps the served models in step with ``models.config`` with TF Serving's semantics (module docstring)."""

    def __init__(
        self,
        registry_root: str | os.PathLike[str],
        *,
        metrics: ServingMetrics | None = None,
        poll_seconds: float = 1.0,
        file_system_poll_seconds: float = 1.0,
        verify_checksums: bool = True,
        allow_version_labels_for_unavailable_models: bool = False,
        prefer_tflite_model: bool = False,
        loader: Callable[[str, int, Path], LoadedVersion] | None = None,
    ) -> None:
        super().__init__(
            registry_root,
            metrics=metrics,
            poll_seconds=poll_seconds,
            verify_checksums=verify_checksums,
            loader=loader or functools.partial(load_version, prefer_tflite=prefer_tflite_model),
        )
        self.file_system_poll_seconds = file_system_poll_seconds
        self.allow_version_labels_for_unavailable_models = allow_version_labels_for_unavailable_models
        self._applied: Any = None  # the last accepted ModelServerConfig (None: none yet)
        self._history: dict[str, dict[int, VersionStatus]] = {}  # TF Serving's ServableStateMonitor
        self._refusal: str | None = None  # why the file is refused, logged once per reason
        self._state = self._snapshot({}, {})

    # ------------------------------------------------------------------ start and polling

    def start(self) -> None:
        """Apply the config as TF Serving's ServerCore::Create does, or raise :class:`ServerStartError`."""
        with self._reload_lock:
            try:
                config = self.registry.read_serving_config()
            except RegistryError as exc:
                raise ServerStartError(str(exc)) from None
            if config.WhichOneof("config") is not None:
                problem = self._label_problem(config)
                if problem is not None:
                    raise ServerStartError(
                        f"{problem} (a config with labels starts only with "
                        "--allow_version_labels_for_unavailable_models: nothing is loaded before the labels are set)"
                    )
                self._applied = config
                self._sync()
                self._check_all_available(config)
        self._thread = threading.Thread(target=self._poll, name="model-config-poller", daemon=True)
        self._thread.start()

    def _check_all_available(self, config: Any) -> None:
        """TF Serving waits at start until every model has an AVAILABLE version, and exits when one cannot."""
        unavailable = []
        for entry in config.model_config_list.config:
            model = self._state.models[entry.name]
            if not model.versions:
                errors = "; ".join(f"version {s.version}: {s.error_message}" for s in model.statuses.values())
                unavailable.append(f"{{{entry.name}{' due to error: ' + errors if errors else ': no version found'}}}")
        if unavailable:
            raise ServerStartError(f"{len(unavailable)} model(s) did not become available: {', '.join(unavailable)}")

    def _poll(self) -> None:
        """Read the config file every poll_seconds and list the version folders every file_system_poll_seconds."""
        start = time.monotonic()
        next_read = start + self.poll_seconds if self.poll_seconds > 0 else math.inf
        next_listing = start + self.file_system_poll_seconds if self.file_system_poll_seconds > 0 else math.inf
        while min(next_read, next_listing) < math.inf:
            if self._stop.wait(max(0.0, min(next_read, next_listing) - time.monotonic())):
                return
            now = time.monotonic()
            read_config = now >= next_read
            if read_config:
                next_read = now + self.poll_seconds
            if read_config or now >= next_listing:
                next_listing = now + self.file_system_poll_seconds
            try:
                if read_config:
                    self.refresh_routes()
                    self.reload()
                else:
                    self.rescan()
            except Exception:  # keep polling: a later config or folder may well load
                log.exception("Polling %s failed; still serving what was loaded", self.registry.root)

    # ------------------------------------------------------------------ applying the config

    def reload(self) -> ServingState:
        """One poll of the config file: apply it unless TF Serving would refuse it, then sync the versions."""
        with self._reload_lock:
            try:
                config = self.registry.read_serving_config()
            except RegistryError as exc:
                self._refuse(f"Failed to read ModelServerConfig file: {exc}")
                config = None
            # An empty file is no config at all: TF Serving takes no action for it.
            if config is not None and config.WhichOneof("config") is not None and config != self._applied:
                problem = self._label_problem(config)
                if problem is None:
                    self._applied = config
                    self._refusal = None
                    log.info("Applying the model config of %s", self.registry.config_path)
                else:
                    self._refuse(problem)
            self._sync()
            return self._state

    def rescan(self) -> ServingState:
        """One listing of the version folders for the config last applied (new folders, removed ones)."""
        with self._reload_lock:
            self._sync()
            return self._state

    def _refuse(self, problem: str) -> None:
        if problem != self._refusal:
            log.error("Refusing %s, still serving the previous config: %s", self.registry.config_path, problem)
            self._refusal = problem

    def _label_problem(self, config: Any) -> str | None:
        """TF Serving's check of a new config's labels against what is AVAILABLE now (None: accepted)."""
        current = self._state
        for entry in config.model_config_list.config:
            model = current.models.get(entry.name)
            loaded = model.versions if model is not None else {}
            labels = model.labels if model is not None else {}
            for label, version in sorted(entry.version_labels.items()):
                if version in loaded:
                    continue
                if self.allow_version_labels_for_unavailable_models and labels.get(label, version) == version:
                    continue  # a new label, or one that stays where it is
                return (
                    f"Request to assign label to version {version} of model {entry.name}, "
                    "which is not currently available for inference"
                )
        return None

    def _aspired_versions(self, entry: Any) -> list[int]:
        """The versions the policy asks for among the folders on disk (TF Serving's storage path source)."""
        on_disk = self.registry.versions(entry.name)
        policy = entry.model_version_policy
        which = policy.WhichOneof("policy_choice")
        if which == "specific":
            return sorted(set(policy.specific.versions) & set(on_disk))
        if which == "all":
            return on_disk
        count = max(policy.latest.num_versions, 1) if which == "latest" else 1
        return on_disk[-count:]

    def _sync(self) -> None:
        """Load what the applied config asks for, then unload what it no longer does; publish twice.

        First the new labels with ``LOADING`` for the versions about to load
        (TF Serving swaps its label map before loading), then the result.
        """
        current = self._state
        entries = list(self._applied.model_config_list.config) if self._applied is not None else []
        aspired = {entry.name: self._aspired_versions(entry) for entry in entries}
        labels = {entry.name: dict(entry.version_labels) for entry in entries}
        # A failed version stops being managed once no longer asked for; asked for again, it is tried again.
        self._failed = {key: status for key, status in self._failed.items() if key[1] in aspired.get(key[0], ())}
        loaded_now = {name: dict(model.versions) for name, model in current.models.items()}
        to_load = {
            name: [v for v in reversed(versions) if v not in loaded_now.get(name, {}) and (name, v) not in self._failed]
            for name, versions in aspired.items()
        }
        for name, versions in to_load.items():
            for version in versions:
                self._history.setdefault(name, {})[version] = VersionStatus(version, LOADING)
        labels_now = {name: dict(model.labels) for name, model in current.models.items() if model.labels}
        if any(to_load.values()) or labels_now != {name: named for name, named in labels.items() if named}:
            self._publish(self._snapshot({**{name: {} for name in aspired}, **loaded_now}, labels))

        result: dict[str, dict[int, LoadedVersion]] = {}
        for name, versions in aspired.items():
            loaded = dict(loaded_now.get(name, {}))
            for version in to_load[name]:
                version_loaded, status = self._load(name, version)
                self._history.setdefault(name, {})[version] = status
                if version_loaded is not None:
                    loaded[version] = version_loaded
                else:
                    self._failed[(name, version)] = status
            unasked = sorted(v for v in loaded if v not in versions)
            # AvailabilityPreservingPolicy: with versions asked for and none of them AVAILABLE, the highest old one stays.
            keep = unasked[-1:] if versions and not any(v in loaded for v in versions) else []
            for version in unasked:
                if version not in keep:
                    del loaded[version]
                    self._history.setdefault(name, {})[version] = VersionStatus(version, END)
            result[name] = loaded
        for name, versions_before in loaded_now.items():
            if name not in aspired:  # the model left the config: all of it unloads
                for version in versions_before:
                    self._history.setdefault(name, {})[version] = VersionStatus(version, END)
                result[name] = {}
        self._publish(self._snapshot(result, labels))

    def _snapshot(
        self, versions: Mapping[str, Mapping[int, LoadedVersion]], labels: Mapping[str, Mapping[str, int]]
    ) -> ServingState:
        models = {
            name: ModelState(
                name=name,
                versions=dict(loaded),
                labels=dict(labels.get(name, {})),
                statuses=dict(sorted(self._history.get(name, {}).items())),
            )
            for name, loaded in versions.items()
        }
        return ServingState(models=models, default_label=None, status_ignores_labels=True)


def create_model_manager(
    behaviour: str,
    registry_root: str | os.PathLike[str],
    *,
    metrics: ServingMetrics,
    poll_seconds: float,
    file_system_poll_seconds: float,
    verify_checksums: bool,
    prefer_tflite_model: bool,
    allow_version_labels_for_unavailable_models: bool,
) -> ModelManager:
    """The manager of ``behaviour`` (``default`` or ``tfserving``)."""
    if behaviour not in BEHAVIOURS:
        raise ValueError(f"unknown server behaviour {behaviour!r}; expected one of {', '.join(BEHAVIOURS)}")
    if behaviour == TFSERVING_BEHAVIOUR:
        return TFServingModelManager(
            registry_root,
            metrics=metrics,
            poll_seconds=poll_seconds,
            file_system_poll_seconds=file_system_poll_seconds,
            verify_checksums=verify_checksums,
            allow_version_labels_for_unavailable_models=allow_version_labels_for_unavailable_models,
            prefer_tflite_model=prefer_tflite_model,
        )
    return ModelManager(registry_root, metrics=metrics, poll_seconds=poll_seconds, verify_checksums=verify_checksums)
