"""How each runtime starts a bot: the argv to exec, or a shell script that execs it.

``command_for(runtime, entrypoint, code_dir)`` checks the entrypoint (a relative path inside the code dir,
plain characters only, the file present, the right kind for the runtime) and returns the argv. The
process backend execs it directly (no shell: a bot is exactly one process, working dir = code dir);
containers run the script from ``write_entrypoint``, which ``cd``s to the code dir and ``exec``s the argv.

Runtimes (DESIGN.md): python3.11 (entry file defines ``main(bot_id, config)``; a small wrapper runs it),
nodejs20 (``node entry``), rust / cpp / haskell (a compiled binary shipped in the zip), dotnet8
(``dotnet X.dll``), scala3 (``java -jar X.jar``, or ``X.jar:Main`` -> ``java -cp X.jar Main``).
"""
from __future__ import annotations

import os
import re
import shlex
import stat
import tempfile
from pathlib import Path


class EntrypointError(Exception):
    """The runtime or entrypoint cannot be run; the message says what to fix."""


PYTHON_RUNTIMES = ("python3.11",)
RUNTIMES = ("python3.11", "nodejs20", "rust", "cpp", "dotnet8", "scala3", "haskell")
_BINARY_RUNTIMES = ("rust", "cpp", "haskell")
_EXTENSIONS = {
    "python3.11": (".py",),
    "nodejs20": (".js", ".mjs", ".cjs"),
    "dotnet8": (".dll",),
    "scala3": (".jar",),
}
_SAFE_PATH = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+@-]*(/[A-Za-z0-9_][A-Za-z0-9_.+@-]*)*$")
_JAVA_CLASS = re.compile(r"^[A-Za-z_$][A-Za-z0-9_$]*(\.[A-Za-z_$][A-Za-z0-9_$]*)*$")

# The Python wrapper, run as ``python3 -u -c PY_WRAPPER <entry file> <code dir>``. With the entry's dir,
# the code dir and ``<code dir>/vendor`` (vendored packages) on sys.path, it loads the entry file as a module, calls main(BOT_ID, json.loads(BOT_CONFIG)) (awaiting it if it is a coroutine), and
# exits 0 when main returns, 1 on an exception (traceback on stderr) or a result {"status": "error"}.
PY_WRAPPER = r'''
import asyncio, importlib.util, inspect, json, os, sys, traceback
entry, code_dir = sys.argv[1], sys.argv[2]
sys.argv = [entry]
for p in (os.path.join(code_dir, "vendor"), code_dir, os.path.dirname(entry)):
    if p not in sys.path and os.path.isdir(p):
        sys.path.insert(0, p)
bot_id = os.environ.get("BOT_ID", "")
try:
    config = json.loads(os.environ.get("BOT_CONFIG") or "{}")
except ValueError as e:
    print(f"the0: BOT_CONFIG is not valid JSON: {e}", file=sys.stderr, flush=True)
    sys.exit(1)
try:
    spec = importlib.util.spec_from_file_location("__the0_bot__", entry)
    module = importlib.util.module_from_spec(spec)
    sys.modules["__the0_bot__"] = module
    spec.loader.exec_module(module)
    main = getattr(module, "main", None)
    if not callable(main):
        print(f"the0: {entry} defines no main(bot_id, config) function", file=sys.stderr, flush=True)
        sys.exit(1)
    result = main(bot_id, config)
    if inspect.isawaitable(result):
        result = asyncio.run(result)
except SystemExit:
    raise
except KeyboardInterrupt:
    sys.exit(130)
except BaseException:
    traceback.print_exc()
    sys.stderr.flush()
    sys.exit(1)
if isinstance(result, dict) and str(result.get("status", "")).lower() == "error":
    print(f"the0: bot reported an error: {result.get('message', result)}", file=sys.stderr, flush=True)
    sys.exit(1)
sys.stdout.flush()
sys.exit(0)
'''


def normalize_runtime(runtime: str) -> str:
    r = (runtime or "").strip().lower()
    if r not in RUNTIMES:
        raise EntrypointError(f"unknown runtime {runtime!r}: use one of {', '.join(RUNTIMES)}")
    return r


def check_entry_path(entrypoint: str) -> str:
    """``entrypoint`` if it is a plain relative path (no '..', no absolute path, no odd characters)."""
    e = (entrypoint or "").strip()
    if e.startswith("./"):
        e = e[2:]
    if not e:
        raise EntrypointError("entrypoint is empty: set the bot's entrypoints.bot (e.g. main.py)")
    if e.startswith("/"):
        raise EntrypointError(f"entrypoint {entrypoint!r} is absolute: give a path relative to the code zip's root")
    if ".." in e.split("/"):
        raise EntrypointError(f"entrypoint {entrypoint!r} leaves the code dir ('..' component)")
    if not _SAFE_PATH.match(e):
        raise EntrypointError(
            f"entrypoint {entrypoint!r} has characters that are not allowed: use letters, digits and "
            f"'_ . + @ -', with '/' between directories")
    return e


def _resolve_entry(entry: str, code_dir: str | os.PathLike) -> Path:
    root = Path(code_dir).resolve()
    path = (root / entry)
    real = path.resolve()
    if real != root and root not in real.parents:
        raise EntrypointError(f"entrypoint {entry!r} resolves outside the code dir")
    if not real.is_file():
        top = sorted(os.listdir(root))[:20] if root.is_dir() else []
        raise EntrypointError(
            f"entrypoint {entry!r} not found in the code archive (top-level entries: {', '.join(top) or 'none'})")
    return path


def command_for(runtime: str, entrypoint: str, code_dir: str | os.PathLike, *, python: str = "python3",
                node: str = "node", dotnet: str = "dotnet", java: str = "java") -> list[str]:
    """The argv that runs the bot (run it with cwd = code_dir). Compiled binaries are made executable."""
    rt = normalize_runtime(runtime)
    main_class = None
    entry = entrypoint
    if rt == "scala3" and ":" in (entrypoint or ""):
        entry, main_class = entrypoint.split(":", 1)
        if not _JAVA_CLASS.match(main_class):
            raise EntrypointError(f"entrypoint {entrypoint!r}: {main_class!r} is not a Java class name")
    entry = check_entry_path(entry)
    exts = _EXTENSIONS.get(rt)
    if exts and not entry.endswith(exts):
        raise EntrypointError(f"entrypoint {entry!r} does not fit runtime {rt}: expected a {' or '.join(exts)} file")
    path = str(_resolve_entry(entry, code_dir).absolute())
    code = str(Path(code_dir).absolute())
    if rt == "python3.11":
        return [python, "-u", "-c", PY_WRAPPER, path, code]
    if rt == "nodejs20":
        return [node, path]
    if rt == "dotnet8":
        return [dotnet, path]
    if rt == "scala3":
        return [java, "-cp", path, main_class] if main_class else [java, "-jar", path]
    # rust, cpp, haskell: a compiled binary from the zip
    try:
        mode = os.stat(path).st_mode
        os.chmod(path, stat.S_IMODE(mode) | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    except OSError as e:
        raise EntrypointError(f"entrypoint {entry!r}: cannot make it executable: {e}") from e
    return [path]


_STANDALONE = """\
# Run directly as a container's command (Kubernetes): the bot's output goes to the log file, TERM/INT
# are forwarded to it, and its exit code lands in the done-file so the sync sidecar finishes.
# bootstrap.sh does all that itself and sets THE0_SUPERVISED=1: then the bot simply replaces this shell.
if [ "${{THE0_SUPERVISED:-}}" = 1 ]; then
    unset THE0_SUPERVISED
    exec {argv}
fi
LOGS={logs}
mkdir -p "$LOGS" || exit 1
rm -f "$LOGS/.done" "$LOGS/.done.tmp"
{argv} >>"$LOGS/{log_file}" 2>&1 </dev/null &
BOT=$!
SIGNALLED=0
trap 'SIGNALLED=1; kill -TERM "$BOT" 2>/dev/null' TERM INT
while :; do
    SIGNALLED=0
    wait "$BOT"
    RC=$?
    if [ "$SIGNALLED" = 1 ] && kill -0 "$BOT" 2>/dev/null; then
        continue
    fi
    break
done
printf '%s\\n' "$RC" >"$LOGS/.done.tmp" && mv -f "$LOGS/.done.tmp" "$LOGS/.done"
exit "$RC"
"""


def script_for(argv: list[str], code_dir: str | os.PathLike, logs_dir: str | os.PathLike | None = None,
               log_file: str = "bot.log") -> str:
    """A POSIX sh script that enters the code dir and runs ``argv``.

    Without ``logs_dir`` it just ``exec``s the bot (the bot replaces the shell). With ``logs_dir`` the
    script also works as a container's whole command: unless ``THE0_SUPERVISED=1`` (set by
    bootstrap.sh, which then execs the bot the same way), it appends the bot's output to
    ``logs_dir/log_file``, forwards TERM/INT, writes the exit code to ``logs_dir/.done`` and exits with it.
    """
    quoted = " ".join(shlex.quote(a) for a in argv)
    head = f"#!/bin/sh\n# generated by daemon init: runs the bot\ncd {shlex.quote(str(code_dir))} || exit 1\n"
    if logs_dir is None:
        return head + f"exec {quoted}\n"
    if "/" in log_file or not log_file:
        raise EntrypointError(f"log file name {log_file!r} must be a plain file name")
    return head + _STANDALONE.format(argv=quoted, logs=shlex.quote(str(logs_dir)), log_file=log_file)


def write_entrypoint(runtime: str, entrypoint: str, code_dir: str | os.PathLike, path: str | os.PathLike,
                     logs_dir: str | os.PathLike | None = None, **programs: str) -> list[str]:
    """Write the entrypoint script (``script_for``) to ``path`` atomically, mode 0755; returns the bot's argv."""
    argv = command_for(runtime, entrypoint, code_dir, **programs)
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".entrypoint-", dir=dest.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(script_for(argv, Path(code_dir).absolute(), logs_dir))
        os.chmod(tmp, 0o755)
        os.replace(tmp, dest)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return argv
