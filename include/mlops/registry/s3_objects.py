"""The few S3 calls the object-store registry makes, with conditional writes and errors that name the URI.

boto3 (not s3fs) because the registry's correctness rests on three things
that boto3 exposes as they are: ``IfNoneMatch="*"`` (create only if absent)
and ``IfMatch=<etag>`` (replace only if unchanged) on ``PutObject``, the
``PreconditionFailed`` / ``ConditionalRequestConflict`` answers, and ETags;
and because it keeps no listing cache that could hide a version another
process just published.  The endpoint, region and credentials come from the
standard AWS settings (``AWS_ENDPOINT_URL_S3``, ``AWS_REGION``, the credential
chain: environment, profile, IRSA / instance role), so nothing here holds one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import boto3
import botocore.config
import botocore.exceptions

from include.mlops.registry.object_uri import ObjectUri
from include.mlops.registry.protocol import RegistryError

# S3's answers to a conditional write whose condition does not hold (412), or that raced another one (409).
_CONDITION_CODES = frozenset({"PreconditionFailed", "ConditionalRequestConflict", "412", "409"})
_MISSING_KEY_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
_NO_PERMISSION_CODES = frozenset(
    {"AccessDenied", "403", "Forbidden", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken"}
)


class ConditionFailed(RegistryError):
    """A conditional write found the object not as required (created meanwhile, or changed since it was read)."""


def make_client(endpoint_url: str | None = None) -> Any:
    """An S3 client (thread-safe) from the standard AWS settings; ``endpoint_url`` overrides theirs."""
    config = botocore.config.Config(retries={"mode": "standard", "max_attempts": 5})
    return boto3.session.Session().client("s3", endpoint_url=endpoint_url, config=config)


class S3Objects:
    """Objects under one ``s3://bucket/prefix``; keys given to its methods are relative to the prefix."""

    def __init__(self, root: ObjectUri, client: Any) -> None:
        self.root = root
        self.client = client

    def uri(self, rel: str) -> ObjectUri:
        return self.root / rel

    def _key(self, rel: str) -> str:
        return (self.root / rel).key

    # ------------------------------------------------------------------ reads

    def get(self, rel: str) -> tuple[bytes, str] | None:
        """The object's bytes and ETag, or None when it does not exist."""
        try:
            answer = self.client.get_object(Bucket=self.root.bucket, Key=self._key(rel))
            return answer["Body"].read(), answer["ETag"]
        except botocore.exceptions.ClientError as exc:
            if _code(exc) in _MISSING_KEY_CODES:
                return None
            raise self.error(exc, "read", rel) from None
        except botocore.exceptions.BotoCoreError as exc:
            raise self.error(exc, "read", rel) from None

    def exists(self, rel: str) -> bool:
        try:
            self.client.head_object(Bucket=self.root.bucket, Key=self._key(rel))
            return True
        except botocore.exceptions.ClientError as exc:
            if _code(exc) in _MISSING_KEY_CODES:
                return False
            raise self.error(exc, "look up", rel) from None
        except botocore.exceptions.BotoCoreError as exc:
            raise self.error(exc, "look up", rel) from None

    def sha256(self, rel: str) -> str:
        """sha256 of the object's bytes, streamed (an object that vanished meanwhile reads as RegistryError)."""
        try:
            body = self.client.get_object(Bucket=self.root.bucket, Key=self._key(rel))["Body"]
            digest = hashlib.sha256()
            for chunk in iter(lambda: body.read(1 << 20), b""):
                digest.update(chunk)
            return digest.hexdigest()
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            raise self.error(exc, "read", rel) from None

    def keys(self, rel_prefix: str) -> Iterator[str]:
        """Every object key under ``rel_prefix/``, relative to it."""
        for key, _ in self.listing(rel_prefix):
            yield key

    def listing(self, rel_prefix: str) -> Iterator[tuple[str, str]]:
        """(key relative to ``rel_prefix/``, ETag) of every object under it: the LIST alone, no object is read."""
        prefix = self._key(rel_prefix) + "/"
        for page in self._pages("list", rel_prefix, Prefix=prefix):
            for item in page.get("Contents", []):
                if not item["Key"].endswith("/"):  # a folder marker some tools create
                    yield item["Key"][len(prefix) :], str(item.get("ETag", ""))

    def children(self, rel_prefix: str) -> Iterator[str]:
        """The names of the 'folders' directly under ``rel_prefix/``."""
        prefix = self._key(rel_prefix) + "/"
        for page in self._pages("list", rel_prefix, Prefix=prefix, Delimiter="/"):
            for item in page.get("CommonPrefixes", []):
                yield item["Prefix"][len(prefix) :].rstrip("/")

    def files(self, rel_prefix: str = "") -> Iterator[str]:
        """The names of the objects directly under ``rel_prefix/`` (not those in its 'folders')."""
        key = self._key(rel_prefix)
        prefix = f"{key}/" if key else ""
        for page in self._pages("list", rel_prefix, Prefix=prefix, Delimiter="/"):
            for item in page.get("Contents", []):
                if not item["Key"].endswith("/"):
                    yield item["Key"][len(prefix) :]

    def _pages(self, operation: str, rel: str, **kwargs: Any) -> Iterator[dict[str, Any]]:
        try:
            yield from self.client.get_paginator("list_objects_v2").paginate(Bucket=self.root.bucket, **kwargs)
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            raise self.error(exc, operation, rel) from None

    # ------------------------------------------------------------------ writes

    def put(self, rel: str, data: bytes, *, if_match: str | None = None, create_only: bool = False) -> str:
        """Write the object; returns its new ETag.

        ``create_only`` writes only if no object has the key (``If-None-Match: *``);
        ``if_match`` only if the object's ETag is still that one.  Either
        condition failing raises :class:`ConditionFailed` and writes nothing.
        """
        conditions: dict[str, str] = {}
        if create_only:
            conditions["IfNoneMatch"] = "*"
        if if_match is not None:
            conditions["IfMatch"] = if_match
        try:
            answer = self.client.put_object(Bucket=self.root.bucket, Key=self._key(rel), Body=data, **conditions)
            return str(answer["ETag"])
        except botocore.exceptions.ClientError as exc:
            code = _code(exc)
            # If-Match on an object deleted since it was read answers 404: the state moved on all the same.
            if code in _CONDITION_CODES or (if_match is not None and code in _MISSING_KEY_CODES):
                raise ConditionFailed(f"{self.uri(rel)} changed meanwhile ({code})") from None
            raise self.error(exc, "write", rel) from None
        except botocore.exceptions.BotoCoreError as exc:
            raise self.error(exc, "write", rel) from None

    def upload(self, rel: str, path: str) -> None:
        """Upload a local file (multipart when large)."""
        try:
            self.client.upload_file(path, self.root.bucket, self._key(rel))
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            raise self.error(exc, "write", rel) from None
        except boto3.exceptions.S3UploadFailedError as exc:
            raise RegistryError(f"cannot write {self.uri(rel)}: {exc}") from None

    def remove(self, rel: str) -> None:
        """Delete one object (none there is fine); unlike :meth:`delete`, a failure raises :class:`RegistryError`."""
        try:
            self.client.delete_object(Bucket=self.root.bucket, Key=self._key(rel))
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            raise self.error(exc, "delete", rel) from None

    def delete(self, rels: list[str]) -> None:
        """Delete the objects (best effort: the caller is already failing)."""
        for start in range(0, len(rels), 1000):
            batch = [{"Key": self._key(rel)} for rel in rels[start : start + 1000]]
            try:
                self.client.delete_objects(Bucket=self.root.bucket, Delete={"Objects": batch, "Quiet": True})
            except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError):
                return

    # ------------------------------------------------------------------ errors

    def error(self, exc: Exception, operation: str, rel: str) -> RegistryError:
        """A :class:`RegistryError` that names the operation, the URI and what to fix."""
        where = self.uri(rel)
        if isinstance(exc, botocore.exceptions.NoCredentialsError):
            return RegistryError(f"cannot {operation} {where}: no AWS credentials found (set them up for the worker)")
        if isinstance(exc, botocore.exceptions.BotoCoreError):
            return RegistryError(f"cannot {operation} {where}: {exc}")
        code = _code(exc)
        if code == "NoSuchBucket":
            return RegistryError(
                f"cannot {operation} {where}: bucket {self.root.bucket!r} does not exist; "
                f"create it or fix the registry URI {self.root}"
            )
        if code in _NO_PERMISSION_CODES:
            return RegistryError(
                f"cannot {operation} {where}: no permission ({code}); the registry needs s3:GetObject, "
                f"s3:PutObject, s3:DeleteObject and s3:ListBucket on {self.root}"
            )
        message = (
            exc.response.get("Error", {}).get("Message", "") if isinstance(exc, botocore.exceptions.ClientError) else ""
        )
        return RegistryError(f"cannot {operation} {where}: {code} {message}".rstrip())


def _code(exc: botocore.exceptions.ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))
