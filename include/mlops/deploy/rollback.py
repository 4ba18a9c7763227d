"""Deploy's way back: a label restored by a compare-and-set, and confirmed through the model server.

A deploy keeps the label's previous version in the version policy until the
candidate is verified, so the label can go back to a version the server still
has loaded (TF Serving refuses a config whose label names an unloaded
version).  Restoring is one compare-and-set edit of the model config file
(:meth:`ModelRegistry.move_label`), so a label someone else moved meanwhile is
left alone, and the candidate leaves the policy in the same write.  With a
server, the step then waits until the label answers with the restored version
(through ``/labels/<label>/metadata``: TF Serving's status API ignores labels).
"""

from __future__ import annotations

import logging

from include.mlops.deploy.errors import DeployError
from include.mlops.deploy.journal import DeployJournal, deploy_lock_if_free, read_journal, remove_journal
from include.mlops.deploy.server_client import ModelServerClient, ServerNotReadyError
from include.mlops.registry.label_log import REPAIR_REASON, label_move_context
from include.mlops.registry.protocol import LabelMovedError, ModelRegistry

log = logging.getLogger(__name__)


def restore_label(
    registry: ModelRegistry,
    server: ModelServerClient | None,
    name: str,
    label: str,
    moved_to: int,
    previous: int | None,
    *,
    confirm: bool = True,
    server_poll_seconds: float = 1.0,
) -> tuple[str, bool]:
    """Point ``label`` back at ``previous`` (or remove it) and drop ``moved_to`` from the version policy.

    With a ``server``, wait until the label answers with ``previous`` (or with
    nothing when it had no version before): always after moving it back, and
    when ``confirm`` also when the file already had it there (a retry cannot
    tell whether the server saw the move).  Returns a sentence for messages
    and whether the state is settled: False only when the server did not
    confirm the label within its timeout (the file is restored either way; the
    caller keeps its journal so that the next attempt waits again).
    """
    try:
        registry.move_label(name, label, previous, expected=moved_to)
        moved_back = True
    except LabelMovedError as moved:
        if moved.actual != previous:
            return _left_to_someone_else(name, label, moved.actual), True
        # The label never moved (or was restored already): only the preloaded version leaves the policy.
        try:
            registry.move_label(name, label, previous, expected=previous)
        except LabelMovedError as again:
            return _left_to_someone_else(name, label, again.actual), True
        moved_back = False
    if not moved_back:
        said = f"Label {label!r} still names {_version(previous)}, and version {moved_to} is no longer preloaded"
    elif previous is None:
        said = f"Label {label!r} was removed (no version had it before) and version {moved_to} unloaded"
    else:
        log.error("%s: label %r moved back to version %d", name, label, previous)
        said = f"Label {label!r} was moved back to version {previous}, which keeps serving"
    if server is None or not (moved_back or confirm):
        return said + ".", True
    try:
        server.wait_label(name, label, previous, server_poll_seconds=server_poll_seconds)
    except ServerNotReadyError as exc:
        log.error("%s: the server has not confirmed label %r on %s: %s", name, label, _version(previous), exc)
        return f"{said}, but {server.url} has not confirmed it yet ({exc}); the next attempt waits again.", False
    return f"{said}; {server.url} confirmed it.", True


def _version(version: int | None) -> str:
    return f"version {version}" if version is not None else "no version"


def _left_to_someone_else(name: str, label: str, actual: int | None) -> str:
    log.warning("%s: label %r now names %s, moved by someone else; leaving it", name, label, _version(actual))
    return f"Label {label!r} was moved to {_version(actual)} by someone else meanwhile and was left there."


def repair_unfinished_deploy(
    registry: ModelRegistry,
    server: ModelServerClient | None,
    journal: DeployJournal,
    *,
    server_poll_seconds: float = 1.0,
) -> None:
    """Put a label an unfinished deploy left on an unverified version back on the last verified one.

    The caller holds the model's deploy lock, so the deploy that wrote
    ``journal`` is dead.  Without a ``server`` the label is restored in the
    config file only (the server applies it at its next poll).
    """
    name, label = journal.model_name, journal.label
    with label_move_context(reason=f"{REPAIR_REASON} {journal.describe()}"):
        said, settled = restore_label(
            registry, server, name, label, journal.version, journal.previous, confirm=True,
            server_poll_seconds=server_poll_seconds,
        )  # fmt: skip
    log.warning("%s: %s; repaired: %s", name, journal.describe(), said)
    if not settled:
        raise DeployError(f"{name}: repairing label {label!r} after an unfinished deploy: {said}")
    remove_journal(journal)


def verified_label_version(registry: ModelRegistry, name: str, label: str = "stable") -> int | None:
    """The version ``label`` names once every unfinished move of it is undone: the last verified one.

    With a journal and no deploy running, the label is repaired first (in the
    config file); while a deploy runs, its journal's previous version is the
    answer and nothing changes.
    """
    model_dir = registry.model_dir(name)
    if read_journal(model_dir, label) is None:
        return registry.label_version(name, label)
    with deploy_lock_if_free(model_dir) as free:
        journal = read_journal(model_dir, label)  # again, under the lock: the deploy may have just finished
        if journal is None:
            return registry.label_version(name, label)
        if free:
            repair_unfinished_deploy(registry, None, journal)
            return registry.label_version(name, label)
    log.warning("%s: a deploy is moving label %r to version %d; its last verified version is %s",
                name, label, journal.version, journal.previous)  # fmt: skip
    return journal.previous
