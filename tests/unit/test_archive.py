"""daemon.archive: safe extraction of code zips and state tars, deterministic state tars."""
from __future__ import annotations

import io
import os
import stat
import struct
import tarfile
import zipfile
from pathlib import Path

import pytest

from daemon.archive import (
    CODE_LIMITS,
    ArchiveError,
    Limits,
    dir_digest,
    extract_archive,
    extract_tar,
    extract_zip,
    make_state_tar,
    safe_parts,
)


# -- helpers ---------------------------------------------------------------------------------------------

def make_zip(entries: list[tuple[str, bytes]], modes: dict[str, int] | None = None,
             compression=zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        for name, data in entries:
            info = zipfile.ZipInfo(name)
            info.compress_type = compression
            mode = (modes or {}).get(name)
            if mode is not None:
                info.external_attr = mode << 16
            zf.writestr(info, data)
    return buf.getvalue()


def make_tar(members: list[tarfile.TarInfo], data: dict[str, bytes] | None = None, gz: bool = True) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz" if gz else "w") as tf:
        for m in members:
            payload = (data or {}).get(m.name)
            if payload is not None:
                m.size = len(payload)
            tf.addfile(m, io.BytesIO(payload) if payload is not None else None)
    return buf.getvalue()


def tinfo(name: str, type_=tarfile.REGTYPE, linkname: str = "", mode: int = 0o644) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type = type_
    ti.linkname = linkname
    ti.mode = mode
    return ti


@pytest.fixture
def work(tmp_path: Path):
    """A parent dir holding only ``target``; ``check_clean()`` proves a refusal left nothing anywhere."""
    parent = tmp_path / "work"
    parent.mkdir()
    target = parent / "target"

    class W:
        pass

    w = W()
    w.parent, w.target = parent, target

    def check_clean():
        assert sorted(os.listdir(parent)) in ([], ["target"]), os.listdir(parent)
        if target.exists():
            assert os.listdir(target) == []
        assert not (tmp_path / "evil.txt").exists()

    w.check_clean = check_clean
    return w


def tree(root: Path) -> dict[str, bytes | str]:
    out: dict[str, bytes | str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = Path(dirpath, n)
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = "-> " + os.readlink(p)
            elif p.is_dir():
                out[rel] = "<dir>"
            else:
                out[rel] = p.read_bytes()
    return out


# -- names -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["/etc/passwd", "../x", "a/../../x", "a/..", "C:/x", "a\\..\\x", "a\x00b"])
def test_safe_parts_refuses_escaping_names(name):
    with pytest.raises(ArchiveError):
        safe_parts(name)


def test_safe_parts_normalises_harmless_names():
    assert safe_parts("./a//b/./c") == ("a", "b", "c")
    assert safe_parts("dir/") == ("dir",)


# -- zip -------------------------------------------------------------------------------------------------

def test_good_zip_is_extracted_byte_for_byte(work):
    blob = os.urandom(300_000)
    z = make_zip([("main.py", b"def main(bot_id, config):\n    pass\n"), ("pkg/", b""), ("pkg/data.bin", blob),
                  ("bin/tool", b"\x7fELF..."), ("deep/a/b/c.txt", b"c")],
                 modes={"bin/tool": stat.S_IFREG | 0o755, "main.py": stat.S_IFREG | 0o644})
    res = extract_zip(z, work.target)
    assert (work.target / "main.py").read_bytes() == b"def main(bot_id, config):\n    pass\n"
    assert (work.target / "pkg/data.bin").read_bytes() == blob
    assert (work.target / "deep/a/b/c.txt").read_bytes() == b"c"
    assert os.stat(work.target / "bin/tool").st_mode & 0o111
    assert not os.stat(work.target / "main.py").st_mode & 0o111
    assert res.files == 4 and res.bytes == len(blob) + 35 + 7 + 1
    assert sorted(os.listdir(work.parent)) == ["target"]  # no staging dir left beside or inside
    assert not [n for n in os.listdir(work.target) if n.startswith(".the0")]


def test_zip_from_a_file_path_and_autodetect(work, tmp_path):
    p = tmp_path / "code.zip"
    p.write_bytes(make_zip([("a.txt", b"A")]))
    extract_archive(str(p), work.target)
    assert (work.target / "a.txt").read_bytes() == b"A"


@pytest.mark.parametrize("bad", ["../evil.txt", "../../evil.txt", "sub/../../evil.txt", "/tmp/evil.txt"])
def test_zip_slip_and_absolute_paths_are_refused(work, bad):
    z = make_zip([("ok.txt", b"ok"), (bad, b"pwned")])
    with pytest.raises(ArchiveError, match="absolute path|'\\.\\.'"):
        extract_zip(z, work.target)
    work.check_clean()


def test_zip_symlink_is_refused(work):
    z = make_zip([("ok.txt", b"ok"), ("link", b"/etc/passwd")], modes={"link": stat.S_IFLNK | 0o777})
    with pytest.raises(ArchiveError, match="symlinks are not allowed"):
        extract_zip(z, work.target)
    work.check_clean()


def _lie_about_sizes(z: bytes, claimed: int) -> bytes:
    """Patch every local and central header so entries claim ``claimed`` uncompressed bytes."""
    b = bytearray(z)
    i = 0
    while (i := b.find(b"PK\x03\x04", i)) >= 0:
        struct.pack_into("<I", b, i + 22, claimed)
        i += 4
    i = 0
    while (i := b.find(b"PK\x01\x02", i)) >= 0:
        struct.pack_into("<I", b, i + 24, claimed)
        i += 4
    return bytes(b)


def test_zip_bomb_lying_about_sizes_is_stopped(work):
    # 20 MB of zeros compress to ~20 KB; the headers claim 100 bytes so a size check on headers passes.
    z = _lie_about_sizes(make_zip([("bomb.bin", b"\0" * (20 * 1024 * 1024))]), 100)
    assert zipfile.ZipFile(io.BytesIO(z)).infolist()[0].file_size == 100
    with pytest.raises(ArchiveError):
        extract_zip(z, work.target, Limits(max_bytes=1024 * 1024))
    work.check_clean()


def test_zip_bomb_with_honest_headers_is_refused_before_writing(work):
    z = make_zip([("a.bin", b"\0" * (3 * 1024 * 1024))])
    with pytest.raises(ArchiveError, match="expands to more than 1048576 bytes"):
        extract_zip(z, work.target, Limits(max_bytes=1024 * 1024))
    work.check_clean()


def test_zip_total_size_is_counted_across_entries(work):
    z = make_zip([(f"f{i}.bin", os.urandom(200_000)) for i in range(8)])
    with pytest.raises(ArchiveError, match="expands to more than"):
        extract_zip(z, work.target, Limits(max_bytes=1_000_000))
    work.check_clean()


def test_ten_thousand_tiny_files_are_refused(work):
    z = make_zip([(f"d{i % 10}/f{i}.txt", b"x") for i in range(10_000)], compression=zipfile.ZIP_STORED)
    with pytest.raises(ArchiveError, match="10000 entries, more than the limit of 5000"):
        extract_zip(z, work.target)
    assert CODE_LIMITS.max_files == 5000
    work.check_clean()


def test_damaged_zip_gives_a_clear_error(work):
    with pytest.raises(ArchiveError, match="not a valid zip"):
        extract_zip(b"PK\x03\x04 definitely not a zip", work.target)
    work.check_clean()


def test_refused_archive_keeps_previous_content_and_good_one_replaces_it(work):
    extract_zip(make_zip([("old.txt", b"old")]), work.target)
    with pytest.raises(ArchiveError):
        extract_zip(make_zip([("new.txt", b"new"), ("../evil.txt", b"x")]), work.target)
    assert tree(work.target) == {"old.txt": b"old"}
    extract_zip(make_zip([("new.txt", b"new")]), work.target)
    assert tree(work.target) == {"new.txt": b"new"}


# -- tar -------------------------------------------------------------------------------------------------

def test_tar_with_inside_links_is_extracted(work):
    t = make_tar([tinfo("d", tarfile.DIRTYPE, mode=0o755), tinfo("d/a.txt"), tinfo("ln", tarfile.SYMTYPE, "d/a.txt"),
                  tinfo("d/up", tarfile.SYMTYPE, "../d/a.txt"), tinfo("hard", tarfile.LNKTYPE, "d/a.txt")],
                 {"d/a.txt": b"A"})
    extract_tar(t, work.target)
    assert (work.target / "ln").read_bytes() == b"A"
    assert (work.target / "d/up").read_bytes() == b"A"
    assert os.stat(work.target / "hard").st_ino == os.stat(work.target / "d/a.txt").st_ino


@pytest.mark.parametrize("members", [
    [tinfo("esc", tarfile.SYMTYPE, "../../evil.txt")],
    [tinfo("esc", tarfile.SYMTYPE, "/etc/passwd")],
    [tinfo("d", tarfile.DIRTYPE), tinfo("d/esc", tarfile.SYMTYPE, "../..")],
    [tinfo("hard", tarfile.LNKTYPE, "../evil.txt")],
    [tinfo("hard", tarfile.LNKTYPE, "/etc/passwd")],
    [tinfo("../evil.txt")],
    [tinfo("/tmp/evil.txt")],
    [tinfo("dev", tarfile.CHRTYPE)],
    [tinfo("fifo", tarfile.FIFOTYPE)],
], ids=["sym-dotdot", "sym-abs", "sym-nested", "hard-dotdot", "hard-abs", "slip", "abs", "chardev", "fifo"])
def test_tar_escapes_and_special_files_are_refused(work, members):
    with pytest.raises(ArchiveError):
        extract_tar(make_tar([tinfo("ok.txt")] + members, {"ok.txt": b"ok", "../evil.txt": b"x", "/tmp/evil.txt": b"x"}),
                    work.target)
    work.check_clean()


def test_tar_symlink_chain_that_resolves_outside_is_refused(work):
    # Each link is lexically inside, but d/e/p -> ../.. is the root and q -> d/e/p/.. is then its parent.
    t = make_tar([tinfo("d/e", tarfile.DIRTYPE), tinfo("d/e/p", tarfile.SYMTYPE, "../.."),
                  tinfo("q", tarfile.SYMTYPE, "d/e/p/..")])
    with pytest.raises(ArchiveError, match="resolves outside"):
        extract_tar(t, work.target)
    work.check_clean()


def test_tar_never_writes_through_a_symlink(work):
    t = make_tar([tinfo("sub", tarfile.DIRTYPE), tinfo("ln", tarfile.SYMTYPE, "sub"), tinfo("ln/x.txt")],
                 {"ln/x.txt": b"x"})
    with pytest.raises(ArchiveError, match="not a directory"):
        extract_tar(t, work.target)
    work.check_clean()


def test_tar_gzip_bomb_is_stopped(work):
    t = make_tar([tinfo("big.bin")], {"big.bin": b"\0" * (4 * 1024 * 1024)})
    with pytest.raises(ArchiveError, match="expands to more than"):
        extract_tar(t, work.target, Limits(max_bytes=1024 * 1024))
    work.check_clean()


def test_tar_with_too_many_files_is_refused(work):
    t = make_tar([tinfo(f"f{i}") for i in range(5001)], {f"f{i}": b"x" for i in range(5001)})
    with pytest.raises(ArchiveError, match="more than 5000 entries"):
        extract_tar(t, work.target)
    work.check_clean()


def test_truncated_tar_gz_gives_a_clear_error(work):
    t = make_tar([tinfo("a.bin")], {"a.bin": os.urandom(100_000)})
    with pytest.raises(ArchiveError, match="damaged"):
        extract_tar(t[: len(t) // 2], work.target)
    work.check_clean()


# -- state tar -------------------------------------------------------------------------------------------

def _make_state(root: Path) -> None:
    (root / "sub/deeper").mkdir(parents=True)
    (root / "state.json").write_text('{"position": 3}')
    (root / "sub/model.bin").write_bytes(os.urandom(50_000))
    (root / "sub/deeper/empty").write_bytes(b"")
    (root / "run.sh").write_text("#!/bin/sh\n")
    os.chmod(root / "run.sh", 0o755)
    os.symlink("sub/model.bin", root / "latest")
    (root / "emptydir").mkdir()


def test_state_tar_is_deterministic_and_round_trips(tmp_path):
    a = tmp_path / "a"
    a.mkdir()
    _make_state(a)
    first = make_state_tar(a)
    os.utime(a / "state.json", (1, 1))  # mtimes, atimes and ownership do not matter
    assert make_state_tar(a) == first

    # The same content written elsewhere, in another order, gives the same bytes.
    b = tmp_path / "b"
    extract_tar(first, b)
    assert tree(b) == tree(a)
    assert os.stat(b / "run.sh").st_mode & 0o111
    assert make_state_tar(b) == first
    assert dir_digest(b) == dir_digest(a)

    (b / "state.json").write_text('{"position": 4}')
    assert make_state_tar(b) != first
    assert dir_digest(b) != dir_digest(a)


def test_state_tar_gzip_header_has_no_name_or_time(tmp_path):
    (tmp_path / "s").mkdir()
    data = make_state_tar(tmp_path / "s")
    assert data[:2] == b"\x1f\x8b"
    assert data[4:8] == b"\0\0\0\0"  # gzip mtime 0
    assert data[3] & 0x08 == 0  # no file name stored
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        assert tf.getmembers() == []


def test_state_tar_members_carry_no_owner_or_time(tmp_path):
    s = tmp_path / "s"
    s.mkdir()
    _make_state(s)
    with tarfile.open(fileobj=io.BytesIO(make_state_tar(s))) as tf:
        ms = tf.getmembers()
    assert [m.name for m in ms] == sorted(m.name for m in ms)
    assert all(m.mtime == 0 and m.uid == 0 and m.gid == 0 and m.uname == "" and m.gname == "" for m in ms)


def test_state_tar_refuses_what_restore_would_refuse(tmp_path):
    s = tmp_path / "s"
    s.mkdir()
    (s / "big").write_bytes(b"\0" * 2000)
    with pytest.raises(ArchiveError, match="would be refused on restore"):
        make_state_tar(s, Limits(max_bytes=1000))


def test_dir_digest_of_missing_dir_equals_empty_dir(tmp_path):
    (tmp_path / "e").mkdir()
    assert dir_digest(tmp_path / "missing") == dir_digest(tmp_path / "e")
