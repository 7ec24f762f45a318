"""Local-directory object store: ``<root>/<bucket>/<key>`` files, written atomically.

Used by the embedded runtime and by the daemon when no MinIO endpoint is configured. Every write goes
to a temporary file in the destination directory, is fsynced, then renamed over the target, so a reader
sees the old object or the new one and never a part. Keys are checked so nothing lands outside the root.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from daemon.storage import ObjectStore, StorageError

_TMP_PREFIX = ".tmp-"


def _check_name(what: str, name: str) -> list[str]:
    if not isinstance(name, str) or not name:
        raise ValueError(f"invalid {what} {name!r}: must be a non-empty string")
    if name.startswith("/") or "\\" in name or "\x00" in name:
        raise ValueError(f"invalid {what} {name!r}: absolute paths, backslashes and NUL are not allowed")
    parts = name.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"invalid {what} {name!r}: empty, '.' or '..' path components are not allowed")
    if any(p.startswith(_TMP_PREFIX) for p in parts):
        raise ValueError(f"invalid {what} {name!r}: components starting with {_TMP_PREFIX!r} are reserved")
    return parts


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class LocalObjectStore(ObjectStore):
    """Objects as files under ``root``; thread-safe because every write is a rename of a private temp file."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).absolute()

    def __repr__(self) -> str:
        return f"LocalObjectStore({str(self.root)!r})"

    # -- paths ---------------------------------------------------------------------------------------
    def _path(self, bucket: str, key: str) -> Path:
        _check_name("bucket", bucket)
        if "/" in bucket:
            raise ValueError(f"invalid bucket {bucket!r}: must not contain '/'")
        return self.root.joinpath(bucket, *_check_name("key", key))

    def _write_atomic(self, dest: Path, write, durable: bool = True) -> None:
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, dir=dest.parent)
        except OSError as e:
            raise StorageError(f"local store: cannot write {dest}: {e}", retryable=False) from e
        try:
            with os.fdopen(fd, "wb") as f:
                write(f)
                f.flush()
                if durable:  # objects are fsynced; a download is a re-fetchable copy
                    os.fsync(f.fileno())
            os.replace(tmp, dest)
        except BaseException as e:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            if isinstance(e, OSError):
                raise StorageError(f"local store: cannot write {dest}: {e}", retryable=False) from e
            raise
        if durable:
            _fsync_dir(dest.parent)

    # -- interface ----------------------------------------------------------------------------------
    def put_bytes(self, bucket: str, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        self._write_atomic(self._path(bucket, key), lambda f: f.write(data))

    def put_file(self, bucket: str, key: str, path: str, content_type: str = "application/octet-stream") -> None:
        dest = self._path(bucket, key)
        try:
            src = open(path, "rb")
        except OSError as e:
            raise StorageError(f"local store: cannot read {path}: {e}", retryable=False) from e
        with src:
            self._write_atomic(dest, lambda f: shutil.copyfileobj(src, f, 1024 * 1024))

    def get_bytes(self, bucket: str, key: str) -> bytes | None:
        p = self._path(bucket, key)
        try:
            return p.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None
        except OSError as e:
            raise StorageError(f"local store: cannot read {p}: {e}", retryable=False) from e

    def get_file(self, bucket: str, key: str, path: str) -> bool:
        p = self._path(bucket, key)
        try:
            src = open(p, "rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return False
        except OSError as e:
            raise StorageError(f"local store: cannot read {p}: {e}", retryable=False) from e
        with src:
            self._write_atomic(Path(path).absolute(), lambda f: shutil.copyfileobj(src, f, 1024 * 1024),
                               durable=False)
        return True

    def exists(self, bucket: str, key: str) -> bool:
        return self._path(bucket, key).is_file()

    def list(self, bucket: str, prefix: str = "") -> Iterator[str]:
        _check_name("bucket", bucket)
        base = self.root / bucket
        if not base.is_dir():
            return iter(())
        keys = []
        for dirpath, dirnames, filenames in os.walk(base):
            rel = os.path.relpath(dirpath, base)
            rel = "" if rel == "." else rel.replace(os.sep, "/") + "/"
            # Prune directories that cannot hold keys under the prefix.
            dirnames[:] = [d for d in dirnames if _may_match(rel + d + "/", prefix)]
            for name in filenames:
                if name.startswith(_TMP_PREFIX):
                    continue
                key = rel + name
                if key.startswith(prefix):
                    keys.append(key)
        keys.sort()
        return iter(keys)

    def delete(self, bucket: str, key: str) -> None:
        p = self._path(bucket, key)
        try:
            p.unlink()
        except FileNotFoundError:
            return
        except OSError as e:
            raise StorageError(f"local store: cannot delete {p}: {e}", retryable=False) from e
        # Remove now-empty parent directories up to the bucket (best effort).
        bucket_dir = self.root / bucket
        parent = p.parent
        while parent != bucket_dir and bucket_dir in parent.parents:
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent

    def ping(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StorageError(f"local store: root {self.root} is not usable: {e}", retryable=False) from e
        if not os.access(self.root, os.W_OK):
            raise StorageError(f"local store: root {self.root} is not writable", retryable=False)


def _may_match(dir_prefix: str, prefix: str) -> bool:
    return dir_prefix.startswith(prefix) or prefix.startswith(dir_prefix)
