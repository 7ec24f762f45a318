"""S3/MinIO object store over the ``minio`` SDK (7.2), with bounded retries and clear errors.

- Buckets are created on first write (and remembered); reads of a missing bucket or key give None/False.
- Transient failures (connection errors, timeouts, HTTP 5xx, SlowDown) are retried with exponential
  backoff and jitter, ``tries`` times in all; then a ``StorageError(retryable=True)`` says the endpoint
  is unreachable. Bad credentials give a ``StorageError(retryable=False)`` naming the variables to check.
- ``put_file`` streams big files as a multipart upload (the SDK's ``fput_object``, parts of 5 MiB+).
  The SDK aborts its multipart upload when a part fails; when the abort itself cannot reach the server,
  the next attempt first aborts incomplete uploads left for that key (one writer per key in the0).
- ``get_file`` writes to a temporary file beside the destination and renames it, so a partial download
  never appears under the final name.
"""
from __future__ import annotations

import logging
import os
import random
import tempfile
import threading
import time
from typing import Callable, Iterator, TypeVar
from urllib.parse import urlparse

import certifi
import urllib3
from minio import Minio
from minio.error import InvalidResponseError, MinioException, S3Error, ServerError

from daemon.jsonlog import event
from daemon.storage import ObjectStore, StorageError

log = logging.getLogger(__name__)
T = TypeVar("T")

_CREDENTIAL_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken"}
_TRANSIENT_CODES = {"SlowDown", "InternalError", "ServiceUnavailable", "RequestTimeout", "RequestTimeTooSkewed",
                    "XMinioServerNotInitialized", "OperationAborted"}
_MISSING_CODES = {"NoSuchKey", "NoSuchBucket", "NoSuchObject"}
MULTIPART_THRESHOLD = 5 * 1024 * 1024  # the SDK uses multipart above its 5 MiB minimum part size


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


class _Retryable(Exception):
    """Internal: a failure worth another try."""

    def __init__(self, detail: str):
        super().__init__(detail)
        self.detail = detail


class S3ObjectStore(ObjectStore):
    def __init__(self, endpoint: str, access_key: str | None, secret_key: str | None, secure: bool = False,
                 region: str | None = "us-east-1", tries: int = 5, base_delay: float = 0.2,
                 max_delay: float = 5.0, connect_timeout: float = 5.0, read_timeout: float = 60.0,
                 sleep: Callable[[float], None] = time.sleep):
        if tries < 1:
            raise ValueError("tries must be >= 1")
        self.endpoint = endpoint
        self.secure = secure
        self.tries = tries
        self.base_delay = base_delay
        self.max_delay = max_delay
        self._sleep = sleep
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=connect_timeout, read=read_timeout),
            maxsize=10,
            cert_reqs="CERT_REQUIRED",
            ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where(),
            retries=False,  # retries are ours: bounded, with backoff, and aware of S3 error codes
        )
        try:
            self.client = Minio(endpoint, access_key=access_key or None, secret_key=secret_key or None,
                                secure=secure, region=region or None, http_client=http)
        except ValueError as e:
            raise StorageError(f"invalid MINIO_ENDPOINT {endpoint!r}: {e}", retryable=False) from e
        self._buckets: set[str] = set()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"S3ObjectStore({'https' if self.secure else 'http'}://{self.endpoint})"

    @classmethod
    def from_env(cls, env: dict, **kwargs) -> "S3ObjectStore":
        """Build from MINIO_ENDPOINT ("host:port" or a URL), MINIO_ACCESS_KEY, MINIO_SECRET_KEY, MINIO_USE_SSL."""
        raw = (env.get("MINIO_ENDPOINT") or "").strip()
        if not raw:
            raise StorageError("MINIO_ENDPOINT is not set", retryable=False)
        secure = _truthy(env.get("MINIO_USE_SSL"))
        endpoint = raw
        if "://" in raw:
            u = urlparse(raw)
            if u.scheme not in ("http", "https") or not u.netloc or u.path not in ("", "/"):
                raise StorageError(
                    f"invalid MINIO_ENDPOINT {raw!r}: use host:port or http(s)://host:port with no path",
                    retryable=False)
            endpoint = u.netloc
            secure = u.scheme == "https"
        access, secret = env.get("MINIO_ACCESS_KEY"), env.get("MINIO_SECRET_KEY")
        if bool(access) != bool(secret):
            raise StorageError("set both MINIO_ACCESS_KEY and MINIO_SECRET_KEY (or neither)", retryable=False)
        return cls(endpoint, access, secret, secure=secure, region=env.get("MINIO_REGION") or "us-east-1",
                   **kwargs)

    # -- retry core -----------------------------------------------------------------------------------
    def _classify(self, op: str, bucket: str, key: str, exc: BaseException) -> BaseException:
        """Map an SDK/transport exception to _Retryable or a final StorageError."""
        where = f"{op} s3://{bucket}/{key}" if key else f"{op} s3://{bucket}" if bucket else op
        if isinstance(exc, S3Error):
            if exc.code in _CREDENTIAL_CODES or (exc.code == "AccessDenied" and op == "ping"):
                return StorageError(
                    f"{where} at {self.endpoint}: credentials rejected ({exc.code}): check MINIO_ACCESS_KEY / "
                    f"MINIO_SECRET_KEY", retryable=False)
            if exc.code in _TRANSIENT_CODES or (exc.response is not None and exc.response.status >= 500):
                return _Retryable(f"{exc.code}: {exc.message}")
            if exc.code == "AccessDenied":
                return StorageError(
                    f"{where} at {self.endpoint}: access denied: check MINIO_ACCESS_KEY / MINIO_SECRET_KEY "
                    f"and the bucket policy", retryable=False)
            return StorageError(f"{where} at {self.endpoint} failed: {exc.code}: {exc.message}", retryable=False)
        if isinstance(exc, ServerError):
            if exc.status_code == 403:
                return StorageError(f"{where} at {self.endpoint}: HTTP 403: check MINIO_ACCESS_KEY / "
                                    f"MINIO_SECRET_KEY", retryable=False)
            return _Retryable(f"HTTP {exc.status_code}: {exc}")
        if isinstance(exc, InvalidResponseError):
            status = getattr(exc, "_code", 0) or 0
            if status == 403:
                return StorageError(f"{where} at {self.endpoint}: HTTP 403: check MINIO_ACCESS_KEY / "
                                    f"MINIO_SECRET_KEY", retryable=False)
            if status >= 500 or status == 429:
                return _Retryable(f"HTTP {status} (non-S3 response)")
            return StorageError(f"{where}: {self.endpoint} answered HTTP {status} with a non-S3 response: is "
                                f"MINIO_ENDPOINT an S3/MinIO endpoint?", retryable=False)
        if isinstance(exc, (urllib3.exceptions.HTTPError, ConnectionError, TimeoutError)):
            return _Retryable(f"{type(exc).__name__}: {exc}")
        if isinstance(exc, MinioException):
            return StorageError(f"{where} at {self.endpoint} failed: {exc}", retryable=False)
        if isinstance(exc, OSError):  # local file errors (reading the upload, writing the download)
            return StorageError(f"{where}: local file error: {exc}", retryable=False)
        return exc

    def _call(self, op: str, bucket: str, key: str, fn: Callable[[], T], tries: int | None = None,
              on_retry: Callable[[], None] | None = None) -> T:
        tries = self.tries if tries is None else tries
        last = ""
        for attempt in range(tries):
            if attempt:
                delay = min(self.max_delay, self.base_delay * (2 ** (attempt - 1)))
                self._sleep(delay * random.uniform(0.5, 1.0))
                if on_retry is not None:
                    on_retry()
            try:
                return fn()
            except Exception as exc:  # noqa: BLE001 - classified below
                mapped = self._classify(op, bucket, key, exc)
                if not isinstance(mapped, _Retryable):
                    if mapped is exc:
                        raise
                    raise mapped from exc
                last = mapped.detail
                event(log, "storage.retry", level=logging.DEBUG, op=op, bucket=bucket, key=key,
                      attempt=attempt + 1, error=last)
        raise StorageError(f"{op} s3://{bucket}/{key}: S3 endpoint {self.endpoint} unreachable after {tries} "
                           f"tries (last error: {last}); check MINIO_ENDPOINT and that the server is up",
                           retryable=True)

    # -- buckets ---------------------------------------------------------------------------------------
    def _ensure_bucket(self, bucket: str) -> None:
        with self._lock:
            if bucket in self._buckets:
                return

        self._call("create-bucket", bucket, "", lambda: self._make_bucket(bucket))
        with self._lock:
            self._buckets.add(bucket)

    def _make_bucket(self, bucket: str) -> None:
        if not self.client.bucket_exists(bucket):
            try:
                self.client.make_bucket(bucket)
            except S3Error as e:
                if e.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise

    def _put_recreating_bucket(self, bucket: str, do_put: Callable[[], object]) -> None:
        """Run ``do_put``; when the bucket vanished since we cached it (deleted by an operator), make it again."""
        try:
            do_put()
        except S3Error as e:
            if e.code != "NoSuchBucket":
                raise
            with self._lock:
                self._buckets.discard(bucket)
            self._make_bucket(bucket)
            do_put()
            with self._lock:
                self._buckets.add(bucket)

    # -- writes ----------------------------------------------------------------------------------------
    def put_bytes(self, bucket: str, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        import io

        self._ensure_bucket(bucket)

        def put() -> None:
            self._put_recreating_bucket(bucket, lambda: self.client.put_object(
                bucket, key, io.BytesIO(data), len(data), content_type=content_type))

        self._call("put", bucket, key, put)

    def put_file(self, bucket: str, key: str, path: str, content_type: str = "application/octet-stream") -> None:
        try:
            size = os.path.getsize(path)
        except OSError as e:
            raise StorageError(f"put s3://{bucket}/{key}: cannot read {path}: {e}", retryable=False) from e
        self._ensure_bucket(bucket)
        multipart = size > MULTIPART_THRESHOLD

        def put() -> None:
            self._put_recreating_bucket(bucket, lambda: self.client.fput_object(
                bucket, key, path, content_type=content_type))

        try:
            self._call("put", bucket, key, put,
                       on_retry=(lambda: self.abort_incomplete(bucket, key)) if multipart else None)
        except StorageError:
            if multipart:
                self.abort_incomplete(bucket, key)
            raise

    def put_stream(self, bucket: str, key: str, stream, length: int, part_size: int = 0,
                   content_type: str = "application/octet-stream") -> None:
        """Upload from a readable stream in one try (no retry: a stream cannot be rewound in general).

        Multipart when ``length`` exceeds one part; a failed multipart upload is aborted.
        """
        self._ensure_bucket(bucket)
        try:
            self._call("put", bucket, key,
                       lambda: self.client.put_object(bucket, key, stream, length, part_size=part_size,
                                                      content_type=content_type), tries=1)
        except BaseException:
            self.abort_incomplete(bucket, key)
            raise

    def incomplete_uploads(self, bucket: str, key: str) -> list[str]:
        """Upload ids of multipart uploads of ``key`` that were started and neither completed nor aborted."""
        result = self._call("list-uploads", bucket, key,
                            lambda: self.client._list_multipart_uploads(bucket, prefix=key), tries=1)
        return [u.upload_id for u in result.uploads if u.object_name == key]

    def abort_incomplete(self, bucket: str, key: str) -> int:
        """Best effort: abort multipart uploads of ``key`` still open; returns how many were aborted."""
        aborted = 0
        try:
            for upload_id in self.incomplete_uploads(bucket, key):
                self.client._abort_multipart_upload(bucket, key, upload_id)
                aborted += 1
        except Exception as e:  # noqa: BLE001 - best effort, the next attempt tries again
            event(log, "storage.abort_failed", level=logging.WARNING, bucket=bucket, key=key, error=str(e))
        if aborted:
            event(log, "storage.multipart_aborted", bucket=bucket, key=key, count=aborted)
        return aborted

    # -- reads -----------------------------------------------------------------------------------------
    def get_bytes(self, bucket: str, key: str) -> bytes | None:
        def get() -> bytes | None:
            try:
                resp = self.client.get_object(bucket, key)
            except S3Error as e:
                if e.code in _MISSING_CODES:
                    return None
                raise
            try:
                return resp.read()
            finally:
                resp.close()
                resp.release_conn()

        return self._call("get", bucket, key, get)

    def get_file(self, bucket: str, key: str, path: str) -> bool:
        dest = os.path.abspath(path)
        os.makedirs(os.path.dirname(dest), exist_ok=True)

        def get() -> bool:
            try:
                resp = self.client.get_object(bucket, key)
            except S3Error as e:
                if e.code in _MISSING_CODES:
                    return False
                raise
            fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=os.path.dirname(dest))
            try:
                with os.fdopen(fd, "wb") as f:
                    for chunk in resp.stream(1024 * 1024):
                        f.write(chunk)
                os.replace(tmp, dest)  # atomic; no fsync: a download is a re-fetchable copy
            except BaseException:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
                raise
            finally:
                resp.close()
                resp.release_conn()
            return True

        return self._call("get", bucket, key, get)

    def exists(self, bucket: str, key: str) -> bool:
        def stat() -> bool:
            try:
                self.client.stat_object(bucket, key)
                return True
            except S3Error as e:
                if e.code in _MISSING_CODES or (e.response is not None and e.response.status == 404):
                    return False
                raise

        return self._call("stat", bucket, key, stat)

    def list(self, bucket: str, prefix: str = "") -> Iterator[str]:
        def lst() -> list[str]:
            try:
                return sorted(o.object_name for o in self.client.list_objects(bucket, prefix=prefix or None,
                                                                              recursive=True))
            except S3Error as e:
                if e.code == "NoSuchBucket":
                    return []
                raise

        return iter(self._call("list", bucket, prefix, lst))

    def delete(self, bucket: str, key: str) -> None:
        def rm() -> None:
            try:
                self.client.remove_object(bucket, key)
            except S3Error as e:
                if e.code not in _MISSING_CODES:
                    raise

        self._call("delete", bucket, key, rm)

    def ping(self) -> None:
        self._call("ping", "", "", self.client.list_buckets, tries=1)
