"""Safe extraction of a bot's code zip and state tar.gz, and the deterministic state tar.

Extraction never trusts the archive:
- names that are absolute, hold ``..`` components, backslashes or NUL are refused;
- zips may not hold symlinks at all; tars may hold symlinks and hardlinks only when they resolve inside
  the target (checked when written and again on the finished tree), and no device files or FIFOs;
- the entry count and the total uncompressed size are limited (``Limits``); sizes are checked against
  the header first and then against the bytes actually produced, so a zip that lies about its sizes, or
  a stream that decompresses without end, still stops;
- nothing is ever written through a symlink.

Everything is extracted into a staging directory inside the target and moved into place only when the
whole archive passed; a refused archive leaves the target as it was (empty on a first run) and nothing
outside it. Errors are ``ArchiveError`` with a message saying what was refused and why.

``make_state_tar`` builds a tar.gz whose bytes depend only on the directory's content (names, file
bytes, modes, link targets): sorted entries, mtime 0, uid/gid 0, no owner names, gzip mtime 0.
``dir_digest`` is a content digest of a directory over the same fields.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import os
import shutil
import stat
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator, Union

Source = Union[str, os.PathLike, bytes]

MB = 1024 * 1024
_STAGING_PREFIX = ".the0-extract-"
_CHUNK = 1024 * 1024


class ArchiveError(Exception):
    """An archive was refused or could not be read; the message says which entry and why."""


@dataclass(frozen=True)
class Limits:
    """Bounds on one extraction: total uncompressed bytes and number of entries (files, dirs, links)."""

    max_bytes: int
    max_files: int = 5000


CODE_LIMITS = Limits(max_bytes=512 * MB, max_files=5000)
STATE_LIMITS = Limits(max_bytes=64 * MB, max_files=5000)


@dataclass(frozen=True)
class ExtractResult:
    files: int
    dirs: int
    links: int
    bytes: int


# -- names ------------------------------------------------------------------------------------------------

def safe_parts(name: str) -> tuple[str, ...]:
    """The path components of an archive entry name, or ArchiveError if the name could escape the target."""
    if "\x00" in name:
        raise ArchiveError(f"entry {name!r}: NUL in name")
    if "\\" in name:
        raise ArchiveError(f"entry {name!r}: backslash in name (refused: it is a path separator on Windows)")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":" and name[0].isalpha()):
        raise ArchiveError(f"entry {name!r}: absolute path")
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if ".." in parts:
        raise ArchiveError(f"entry {name!r}: '..' path component")
    return parts


def _source_stream(source: Source) -> BinaryIO:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return io.BytesIO(bytes(source))
    try:
        return open(source, "rb")
    except OSError as e:
        raise ArchiveError(f"cannot open archive {source}: {e}") from e


# -- the extractor ----------------------------------------------------------------------------------------

class _Extractor:
    """Writes validated entries under ``staging``; counts entries and bytes against ``limits``."""

    def __init__(self, staging: Path, limits: Limits, kind: str):
        self.root = staging
        self.limits = limits
        self.kind = kind
        self.entries = 0
        self.files = self.dirs = self.links = 0
        self.bytes = 0
        self.dir_modes: dict[Path, int] = {}
        self.symlinks: list[tuple[Path, str]] = []

    def count_entry(self, name: str) -> None:
        self.entries += 1
        if self.entries > self.limits.max_files:
            raise ArchiveError(
                f"{self.kind} archive has more than {self.limits.max_files} entries (refused at {name!r}); "
                f"the limit exists to stop archive bombs: ship fewer files (e.g. bundle them)")

    def _over_size(self, name: str) -> ArchiveError:
        return ArchiveError(
            f"{self.kind} archive expands to more than {self.limits.max_bytes} bytes (refused at {name!r}); "
            f"the limit exists to stop archive bombs")

    def check_declared(self, name: str, declared_total: int) -> None:
        if declared_total > self.limits.max_bytes:
            raise self._over_size(name)

    def _dir_for(self, parts: tuple[str, ...], name: str) -> Path:
        """Create (or check) the directories ``parts`` under root; refuse to pass through anything but dirs."""
        path = self.root
        for p in parts:
            path = path / p
            if path in self.dir_modes:  # made or checked before; a directory is never replaced
                continue
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                os.mkdir(path, 0o700)
                self.dir_modes.setdefault(path, 0o755)
                continue
            if not stat.S_ISDIR(st.st_mode):
                raise ArchiveError(f"entry {name!r}: path component {p!r} is not a directory "
                                   f"({'a symlink' if stat.S_ISLNK(st.st_mode) else 'a file'})")
            self.dir_modes.setdefault(path, 0o755)
        return path

    def _clear_slot(self, path: Path, name: str) -> None:
        """A later entry replaces an earlier file or link of the same name; never a directory."""
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            raise ArchiveError(f"entry {name!r}: a directory of that name already exists")
        os.unlink(path)

    def add_dir(self, name: str, mode: int = 0o755) -> None:
        parts = safe_parts(name)
        self.count_entry(name)
        if not parts:
            return
        path = self._dir_for(parts, name)
        self.dirs += 1
        self.dir_modes[path] = (mode & 0o777) | 0o700

    def add_file(self, name: str, stream: BinaryIO, mode: int, declared: int | None = None) -> None:
        parts = safe_parts(name)
        self.count_entry(name)
        if not parts:
            raise ArchiveError(f"entry {name!r}: empty file name")
        parent = self._dir_for(parts[:-1], name)
        path = parent / parts[-1]
        self._clear_slot(path, name)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        written = 0
        with os.fdopen(fd, "wb") as out:
            while True:
                chunk = stream.read(_CHUNK)
                if not chunk:
                    break
                written += len(chunk)
                self.bytes += len(chunk)
                if declared is not None and written > declared:
                    raise ArchiveError(f"entry {name!r}: holds more bytes than its header says ({declared}); "
                                       f"refused as a likely archive bomb")
                if self.bytes > self.limits.max_bytes:
                    raise self._over_size(name)
                out.write(chunk)
        os.chmod(path, 0o755 if mode & 0o111 else 0o644)
        self.files += 1

    def add_symlink(self, name: str, target: str) -> None:
        parts = safe_parts(name)
        self.count_entry(name)
        if not parts:
            raise ArchiveError(f"entry {name!r}: empty link name")
        if not target or target.startswith("/") or "\x00" in target:
            raise ArchiveError(f"entry {name!r}: symlink to {target!r} points outside the archive")
        lexical = os.path.normpath(os.path.join(*parts[:-1], target) if parts[:-1] else target)
        if lexical == ".." or lexical.startswith("../"):
            raise ArchiveError(f"entry {name!r}: symlink to {target!r} points outside the archive")
        parent = self._dir_for(parts[:-1], name)
        path = parent / parts[-1]
        self._clear_slot(path, name)
        os.symlink(target, path)
        self.symlinks.append((path, name))
        self.links += 1

    def add_hardlink(self, name: str, target_name: str) -> None:
        parts = safe_parts(name)
        self.count_entry(name)
        tparts = safe_parts(target_name)
        if not parts or not tparts:
            raise ArchiveError(f"entry {name!r}: hardlink with an empty name or target")
        src = self._dir_for(tparts[:-1], name) / tparts[-1]
        try:
            st = os.lstat(src)
        except FileNotFoundError:
            raise ArchiveError(f"entry {name!r}: hardlink to {target_name!r}, which is not in the archive") from None
        if not stat.S_ISREG(st.st_mode):
            raise ArchiveError(f"entry {name!r}: hardlink to {target_name!r}, which is not a regular file")
        path = self._dir_for(parts[:-1], name) / parts[-1]
        self._clear_slot(path, name)
        os.link(src, path, follow_symlinks=False)
        self.links += 1

    def finish(self) -> ExtractResult:
        root = os.path.realpath(self.root)
        for path, name in self.symlinks:
            real = os.path.realpath(path)
            if real != root and not real.startswith(root + os.sep):
                raise ArchiveError(f"entry {name!r}: symlink resolves outside the archive")
        for path in sorted(self.dir_modes, key=lambda p: len(p.parts), reverse=True):
            os.chmod(path, self.dir_modes[path])
        return ExtractResult(self.files, self.dirs, self.links, self.bytes)


def _extract_into(target: str | os.PathLike, kind: str, limits: Limits, fill) -> ExtractResult:
    """Run ``fill(extractor)`` in a staging dir inside ``target``; on success replace the target's content."""
    target = Path(target)
    target.mkdir(parents=True, exist_ok=True)
    for leftover in target.glob(_STAGING_PREFIX + "*"):
        shutil.rmtree(leftover, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=_STAGING_PREFIX, dir=target))
    try:
        ex = _Extractor(staging, limits, kind)
        try:
            fill(ex)
            result = ex.finish()
        except ArchiveError:
            raise
        except (OSError, EOFError, zipfile.BadZipFile, zipfile.LargeZipFile, tarfile.TarError,
                NotImplementedError, RuntimeError, ValueError) as e:
            raise ArchiveError(f"{kind} archive is damaged or unsupported: {type(e).__name__}: {e}") from e
        for entry in os.listdir(target):
            p = target / entry
            if p == staging:
                continue
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
        for entry in os.listdir(staging):
            os.rename(staging / entry, target / entry)
        return result
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# -- zip --------------------------------------------------------------------------------------------------

def extract_zip(source: Source, target: str | os.PathLike, limits: Limits = CODE_LIMITS) -> ExtractResult:
    """Extract a code zip into ``target`` (its previous content is replaced only on success)."""

    def fill(ex: _Extractor) -> None:
        raw = _source_stream(source)
        try:
            zf = zipfile.ZipFile(raw)
        except zipfile.BadZipFile as e:
            raw.close()
            raise ArchiveError(f"code archive is not a valid zip file: {e}") from e
        with raw, zf:
            infos = zf.infolist()
            if len(infos) > limits.max_files:
                raise ArchiveError(
                    f"code archive has {len(infos)} entries, more than the limit of {limits.max_files}; "
                    f"the limit exists to stop archive bombs: ship fewer files (e.g. bundle them)")
            ex.check_declared(infos[-1].filename if infos else "", sum(i.file_size for i in infos))
            for info in infos:
                mode = (info.external_attr >> 16) & 0xFFFF
                ftype = stat.S_IFMT(mode)
                if ftype == stat.S_IFLNK:
                    raise ArchiveError(f"entry {info.filename!r}: symlinks are not allowed in a code zip")
                if ftype not in (0, stat.S_IFREG, stat.S_IFDIR):
                    raise ArchiveError(f"entry {info.filename!r}: not a regular file or directory")
                if info.flag_bits & 0x1:
                    raise ArchiveError(f"entry {info.filename!r}: encrypted entries are not supported")
                if info.is_dir() or ftype == stat.S_IFDIR:
                    ex.add_dir(info.filename, mode or 0o755)
                    continue
                with zf.open(info) as stream:
                    ex.add_file(info.filename, stream, mode, declared=info.file_size)

    return _extract_into(target, "code", limits, fill)


# -- tar --------------------------------------------------------------------------------------------------

class _BoundedReader(io.RawIOBase):
    """Raises ArchiveError once more than ``limit`` bytes came out of ``inner`` (a decompressing stream)."""

    def __init__(self, inner: BinaryIO, limit: int, kind: str):
        self.inner, self.limit, self.kind, self.count = inner, limit, kind, 0

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        data = self.inner.read(len(b))
        self.count += len(data)
        if self.count > self.limit:
            raise ArchiveError(f"{self.kind} archive expands to more than {self.limit} bytes of tar stream; "
                               f"refused as a likely archive bomb")
        b[: len(data)] = data
        return len(data)


def extract_tar(source: Source, target: str | os.PathLike, limits: Limits = STATE_LIMITS,
                kind: str = "state") -> ExtractResult:
    """Extract a tar or tar.gz into ``target`` (its previous content is replaced only on success)."""

    def fill(ex: _Extractor) -> None:
        raw = _source_stream(source)
        with raw:
            head = raw.read(2)
            raw.seek(0)
            inner: BinaryIO = gzip.GzipFile(fileobj=raw, mode="rb") if head == b"\x1f\x8b" else raw
            # Headers, padding and pax records on top of the content: generous but bounded.
            bound = limits.max_bytes + (limits.max_files + 16) * 3 * 512 + 10 * 1024 * 512
            stream = io.BufferedReader(_BoundedReader(inner, bound, kind), buffer_size=_CHUNK)
            with tarfile.open(fileobj=stream, mode="r|") as tf:
                declared = 0
                for m in tf:
                    if m.isreg():
                        declared += m.size
                        ex.check_declared(m.name, declared)
                        f = tf.extractfile(m)
                        ex.add_file(m.name, f, m.mode, declared=m.size)
                    elif m.isdir():
                        ex.add_dir(m.name, m.mode)
                    elif m.issym():
                        ex.add_symlink(m.name, m.linkname)
                    elif m.islnk():
                        ex.add_hardlink(m.name, m.linkname)
                    elif m.isdev() or m.isfifo():
                        raise ArchiveError(f"entry {m.name!r}: device files and FIFOs are not allowed")
                    else:
                        raise ArchiveError(f"entry {m.name!r}: unsupported tar entry type {m.type!r}")

    return _extract_into(target, kind, limits, fill)


def extract_archive(source: Source, target: str | os.PathLike, limits: Limits = CODE_LIMITS,
                    kind: str = "code") -> ExtractResult:
    """Extract a zip, tar or tar.gz, chosen by its first bytes."""
    with _source_stream(source) as f:
        head = f.read(4)
    if head.startswith(b"PK"):
        return extract_zip(source, target, limits)
    return extract_tar(source, target, limits, kind=kind)


# -- deterministic state tar and digest -------------------------------------------------------------------

def _walk_sorted(root: Path) -> Iterator[tuple[str, os.stat_result]]:
    """(relative posix path, lstat) of every entry under ``root``, parents before children, sorted by parts."""
    items: list[tuple[tuple[str, ...], os.stat_result]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel = Path(dirpath).relative_to(root).parts
        for name in dirnames + filenames:
            try:
                items.append((rel + (name,), os.lstat(os.path.join(dirpath, name))))
            except FileNotFoundError:  # removed while we walked
                continue
    items.sort(key=lambda it: it[0])
    for parts, st in items:
        yield "/".join(parts), st


def _read_whole(path: str) -> bytes | None:
    try:
        with open(path, "rb", opener=lambda p, fl: os.open(p, fl | os.O_NOFOLLOW)) as f:
            return f.read()
    except FileNotFoundError:
        return None


def make_state_tar(state_dir: str | os.PathLike, limits: Limits = STATE_LIMITS) -> bytes:
    """The state dir as tar.gz bytes that depend only on its content (regular files, dirs, symlinks).

    Sockets, FIFOs and devices are skipped. Raises ArchiveError when the content exceeds ``limits``
    (what would be refused on restore is never produced).
    """
    root = Path(state_dir)
    buf = io.BytesIO()
    total = count = 0
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=6) as gz:
        with tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tf:
            for rel, st in _walk_sorted(root):
                ti = tarfile.TarInfo(rel)
                ti.mtime = 0
                ti.uid = ti.gid = 0
                ti.uname = ti.gname = ""
                ti.mode = stat.S_IMODE(st.st_mode) & 0o777
                data = None
                if stat.S_ISDIR(st.st_mode):
                    ti.type = tarfile.DIRTYPE
                elif stat.S_ISLNK(st.st_mode):
                    ti.type = tarfile.SYMTYPE
                    try:
                        ti.linkname = os.readlink(root / rel)
                    except FileNotFoundError:
                        continue
                    ti.mode = 0o777
                elif stat.S_ISREG(st.st_mode):
                    data = _read_whole(str(root / rel))
                    if data is None:
                        continue
                    ti.type = tarfile.REGTYPE
                    ti.size = len(data)
                    total += len(data)
                else:
                    continue
                count += 1
                if count > limits.max_files or total > limits.max_bytes:
                    raise ArchiveError(
                        f"state dir {root} holds more than {limits.max_files} entries or {limits.max_bytes} "
                        f"bytes: it would be refused on restore, so it is not saved")
                tf.addfile(ti, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def dir_digest(path: str | os.PathLike) -> str:
    """sha256 over the directory's content: relative names, kinds, permission bits, file bytes, link targets."""
    root = Path(path)
    h = hashlib.sha256()
    if not root.is_dir():
        return h.hexdigest()
    for rel, st in _walk_sorted(root):
        if stat.S_ISDIR(st.st_mode):
            h.update(b"d\0" + rel.encode("utf-8", "surrogateescape") + b"\0%o\0" % stat.S_IMODE(st.st_mode))
        elif stat.S_ISLNK(st.st_mode):
            try:
                target = os.readlink(root / rel)
            except FileNotFoundError:
                continue
            h.update(b"l\0" + rel.encode("utf-8", "surrogateescape") + b"\0" +
                     target.encode("utf-8", "surrogateescape") + b"\0")
        elif stat.S_ISREG(st.st_mode):
            data = _read_whole(str(root / rel))
            if data is None:
                continue
            h.update(b"f\0" + rel.encode("utf-8", "surrogateescape") + b"\0%o\0%d\0" % (
                stat.S_IMODE(st.st_mode), len(data)))
            h.update(hashlib.sha256(data).digest())
    return h.hexdigest()
