"""A local copy of a registry on object storage, for model servers that read a folder.

TF Serving 2.7 and later has no ``s3://`` file system (tensorflow/serving#1963:
"File system scheme 's3' not implemented"), and the project's model server
reads folders.  So where the registry is in a bucket, a mirror loop keeps a
local folder in TF Serving's layout: every version that ``models.config``
labels or keeps loaded is downloaded (checked against its checksums, into a
staging folder renamed into place), and only then is the config written,
with each ``base_path`` pointing at the local folder.  A server polling that
config therefore never sees a label for a version it cannot find.

Run it beside TF Serving (an init container with ``--once``, then a sidecar),
or let the project's server start it (``python -m include.mlops.serving`` does
when ``MLOPS_ARTIFACT_ROOT`` is an ``s3://`` URI)::

    python -m include.mlops.registry.mirror --source s3://bucket/prefix/models --dest /models --interval-s 10

Versions are immutable, so a version already in the folder is never
downloaded again; versions no longer named stay on disk until the next start
(the servers unload them by the config, not by the folder).
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import threading
import uuid
from collections.abc import Sequence
from pathlib import Path

from include.mlops import artifacts
from include.mlops.registry import model_config_file
from include.mlops.registry.model_config_file import CONFIG_FILE
from include.mlops.registry.object_store import ObjectStoreRegistry
from include.mlops.registry.protocol import RegistryError
from include.mlops.registry.version_files import CHECKSUMS_FILE
from include.mlops.serving.canary_weights import ROUTE_FILE

log = logging.getLogger(__name__)


def sync_once(source: ObjectStoreRegistry, dest: Path) -> bool:
    """Bring ``dest`` up to the bucket's ``models.config`` and the versions it names; True when anything changed.

    A model whose new versions cannot be copied (a corrupt one, a network
    error) keeps its current local entry while the others move on; the first
    such error is raised after the config is written.
    """
    dest = artifacts.make_dirs(dest)
    config_file = dest / CONFIG_FILE
    before = model_config_file.read_model_config(config_file) if config_file.is_file() else None
    config = source.read_serving_config()
    changed = False
    failures: list[RegistryError] = []
    for index, entry in enumerate(config.model_config_list.config):
        wanted = set(entry.model_version_policy.specific.versions) | set(entry.version_labels.values())
        try:
            for version in sorted(wanted):
                target = dest / entry.name / str(version)
                if not (target / CHECKSUMS_FILE).is_file():
                    copy_version(source, entry.name, version, target)
                    changed = True
        except RegistryError as exc:
            failures.append(exc)
            kept = model_config_file.find_entry(before, entry.name) if before is not None else None
            if kept is not None:
                config.model_config_list.config[index].CopyFrom(kept)
            else:
                entry.ClearField("version_labels")
                entry.model_version_policy.specific.ClearField("versions")
            continue
        entry.base_path = str(dest / entry.name)
        changed |= _copy_route(source, entry.name, dest)
    text = model_config_file.format_model_config(config)
    if not config_file.is_file() or config_file.read_text() != text:
        artifacts.atomic_write_text(config_file, text)
        changed = True
    if failures:
        raise failures[0]
    return changed


def _copy_route(source: ObjectStoreRegistry, name: str, dest: Path) -> bool:
    """The canary's weighted route of the project's server (``<name>/route.json``), when the bucket has one."""
    found = source.read_object(f"{name}/{ROUTE_FILE}")
    target = dest / name / ROUTE_FILE
    if found is None or (target.is_file() and target.read_bytes() == found):
        return False
    artifacts.atomic_write_bytes(target, found)
    return True


def copy_version(source: ObjectStoreRegistry, name: str, version: int, target: Path) -> None:
    """Download one version into a staging folder beside ``target``, check it, and rename it into place."""
    artifacts.make_dirs(target.parent)
    source.verify(name, version)  # a corrupt version is refused here, before a server could load it
    staging = target.parent / f".{version}.mirror-{uuid.uuid4().hex[:8]}"
    try:
        source.download_version(name, version, staging)
        shutil.rmtree(target, ignore_errors=True)  # a copy an earlier mirror left without its manifest
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("Mirrored %s version %d to %s", name, version, target)


class MirrorLoop:
    """:func:`sync_once` every ``interval_s`` in a daemon thread; errors are logged and retried, never fatal."""

    def __init__(self, source: ObjectStoreRegistry, dest: Path, interval_s: float) -> None:
        self.source, self.dest, self.interval_s = source, Path(dest), interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self.run, name="registry-mirror", daemon=True)

    def start(self) -> MirrorLoop:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self.interval_s + 30)

    def run(self) -> None:
        """Sync until :meth:`stop` (in the foreground: the sidecar's whole life)."""
        while not self._stop.is_set():
            try:
                sync_once(self.source, self.dest)
            except RegistryError as exc:
                log.error("registry mirror %s -> %s: %s (retrying in %g s)", self.source.root, self.dest, exc,
                          self.interval_s)  # fmt: skip
            self._stop.wait(self.interval_s)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m include.mlops.registry.mirror", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--source", required=True, help="the registry in the bucket: s3://bucket/prefix/models")
    parser.add_argument("--dest", required=True, type=Path, help="the local folder servers read (TF Serving's /models)")
    parser.add_argument("--interval-s", type=float, default=10.0, help="seconds between syncs (default 10)")
    parser.add_argument("--once", action="store_true", help="sync once and exit (an init container)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        source = ObjectStoreRegistry(args.source)
        if args.once:
            sync_once(source, args.dest)
            return 0
        MirrorLoop(source, args.dest, args.interval_s).run()
        return 0
    except RegistryError as exc:
        log.error("%s", exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
