"""Where an object-store registry keeps something: ``s3://bucket/key``, a pure address with path arithmetic.

The :class:`~include.mlops.registry.protocol.ModelRegistry` members that say
where things are (``config_path``, ``model_dir``, ``version_dir``,
``require_version``, ``RegisterResult.version_dir``) return a local
:class:`pathlib.Path` from the filesystem registry and an :class:`ObjectUri`
from an object-store one.  Both join with ``/`` and have ``name``, ``parent``
and ``str()`` (the URI TF Serving's ``base_path`` takes).  An ``ObjectUri`` does
no I/O and is deliberately not ``os.PathLike``: ``open()``, ``shutil`` or
``Path(...)`` on it fail at once instead of quietly writing a local file named
``s3:``.  Read and write through the registry instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath

SCHEMES = ("s3", "gs")


@dataclass(frozen=True, order=True)
class ObjectUri:
    """``<scheme>://<bucket>/<key>``; ``key`` has no leading or trailing ``/`` (empty: the bucket itself)."""

    scheme: str
    bucket: str
    key: str = ""

    @classmethod
    def parse(cls, uri: str) -> ObjectUri:
        """``s3://bucket/some/prefix`` -> ObjectUri; ValueError for anything else."""
        scheme, sep, rest = uri.partition("://")
        bucket, _, key = rest.partition("/")
        if not sep or scheme not in SCHEMES or not bucket:
            raise ValueError(f"{uri!r} is not an object-store URI like s3://bucket/prefix")
        parts = [part for part in key.split("/") if part]
        if any(part in (".", "..") for part in parts):
            raise ValueError(f"{uri!r} has '.' or '..' in its key")
        return cls(scheme, bucket, "/".join(parts))

    def __truediv__(self, other: str) -> ObjectUri:
        parts = [part for part in str(other).split("/") if part]
        if any(part in (".", "..") for part in parts):
            raise ValueError(f"cannot join {other!r} to {self}: '.' and '..' have no meaning in an object key")
        return ObjectUri(self.scheme, self.bucket, "/".join([p for p in (self.key, *parts) if p]))

    @property
    def name(self) -> str:
        return PurePosixPath(self.key).name

    @property
    def parent(self) -> ObjectUri:
        return ObjectUri(self.scheme, self.bucket, str(PurePosixPath(self.key).parent).lstrip("."))

    def relative_key(self, key: str) -> str:
        """``key`` (a full object key under this URI) relative to it."""
        prefix = f"{self.key}/" if self.key else ""
        if not key.startswith(prefix):
            raise ValueError(f"{key!r} is not under {self}")
        return key[len(prefix) :]

    def __str__(self) -> str:
        return f"{self.scheme}://{self.bucket}/{self.key}" if self.key else f"{self.scheme}://{self.bucket}"


def scheme_problem(uri: ObjectUri) -> str | None:
    """Why this build cannot keep artifacts at ``uri`` (its scheme), or None: only ``s3://`` is supported.

    ``gs://`` parses (TF Serving reads it), but no GCS stand-in runs where the
    project is tested, so its conditional writes (generation preconditions)
    are not built.
    """
    if uri.scheme == "s3":
        return None
    return f"only s3:// is supported on object storage, not {uri.scheme}:// (gs:// is untested: no GCS stand-in)"
