"""Object storage: one interface, a local-directory store and an S3/MinIO store (minio SDK).

``from_env()`` picks S3 when ``MINIO_ENDPOINT`` is set, else a local directory
(``THE0_OBJECTS_DIR``, or ``THE0_DATA_DIR/objects``).
"""
from __future__ import annotations

import abc
import os
from typing import Iterator


class StorageError(Exception):
    """An object-store operation failed. ``retryable`` says whether trying again may help."""

    def __init__(self, message: str, retryable: bool = True):
        super().__init__(message)
        self.retryable = retryable


class ObjectStore(abc.ABC):
    """Bucket/key blob store. Buckets are created on first use. Implementations are thread-safe."""

    @abc.abstractmethod
    def put_bytes(self, bucket: str, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        """Write ``data`` atomically: readers see the old object or the new one, never a part."""

    @abc.abstractmethod
    def put_file(self, bucket: str, key: str, path: str, content_type: str = "application/octet-stream") -> None:
        """Upload a local file atomically (multipart for big files; a failed multipart is aborted)."""

    @abc.abstractmethod
    def get_bytes(self, bucket: str, key: str) -> bytes | None:
        """The object's content, or None when it does not exist."""

    @abc.abstractmethod
    def get_file(self, bucket: str, key: str, path: str) -> bool:
        """Download to ``path`` (written atomically); False when the object does not exist."""

    @abc.abstractmethod
    def exists(self, bucket: str, key: str) -> bool: ...

    @abc.abstractmethod
    def list(self, bucket: str, prefix: str = "") -> Iterator[str]:
        """Keys under ``prefix`` in lexicographic order."""

    @abc.abstractmethod
    def delete(self, bucket: str, key: str) -> None:
        """Remove the object; no error when it is absent."""

    @abc.abstractmethod
    def ping(self) -> None:
        """Raise StorageError when the store cannot be reached (used by readiness)."""


def from_env(env: dict | None = None) -> ObjectStore:
    """The store the environment describes (DESIGN.md: MINIO_* variables, else a local directory)."""
    env = os.environ if env is None else env
    if env.get("MINIO_ENDPOINT"):
        from daemon.storage_s3 import S3ObjectStore

        return S3ObjectStore.from_env(env)
    from daemon.storage_local import LocalObjectStore

    root = env.get("THE0_OBJECTS_DIR") or os.path.join(env.get("THE0_DATA_DIR", "./.the0"), "objects")
    return LocalObjectStore(root)


