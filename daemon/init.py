"""``daemon init``: make a bot container ready to run before the bot starts.

1. download the code object ``custom-bots/<CODE_FILE>`` and extract it safely into the code dir;
2. restore ``bot-state/<BOT_ID>/state.tar.gz`` into the state dir (absent = first run: empty state);
3. compute the runtime's command and write the exec-ing entrypoint script.

``prepare(...)`` does the work and returns the argv; ``main(argv)`` reads the environment (DESIGN.md:
BOT_ID, RUNTIME, ENTRYPOINT, CODE_FILE, CODE_PATH, STATE_PATH, LOGS_PATH, the store's variables, and
ENTRYPOINT_SCRIPT for where the script goes) and exits 0 when ready, 2 on bad input (the message says
what to fix), 3 when the object store cannot be reached (retrying later may help).
"""
from __future__ import annotations

import logging
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from daemon import layout
from daemon.archive import CODE_LIMITS, STATE_LIMITS, ArchiveError, Limits, extract_archive, extract_tar
from daemon.entrypoints import PY_WRAPPER, EntrypointError, command_for, normalize_runtime, write_entrypoint
from daemon.jsonlog import event
from daemon.storage import ObjectStore, StorageError

log = logging.getLogger("daemon.init")

EXIT_OK = 0
EXIT_BAD_INPUT = 2
EXIT_STORAGE = 3
DEFAULT_ENTRYPOINT_SCRIPT = "/var/the0/entrypoint.sh"


@dataclass(frozen=True)
class InitLimits:
    """Archive limits for code and state; operators raise them with THE0_{CODE,STATE}_MAX_{BYTES,FILES}."""

    code: Limits = CODE_LIMITS
    state: Limits = STATE_LIMITS

    @classmethod
    def from_env(cls, env) -> "InitLimits":
        def num(name: str, default: int) -> int:
            raw = (env.get(name) or "").strip()
            if not raw:
                return default
            try:
                value = int(raw)
            except ValueError:
                value = 0
            if value <= 0:
                raise InitError(f"{name}={raw!r}: use a whole number > 0")
            return value

        return cls(
            code=Limits(num("THE0_CODE_MAX_BYTES", CODE_LIMITS.max_bytes), num("THE0_CODE_MAX_FILES", CODE_LIMITS.max_files)),
            state=Limits(num("THE0_STATE_MAX_BYTES", STATE_LIMITS.max_bytes),
                         num("THE0_STATE_MAX_FILES", STATE_LIMITS.max_files)),
        )


class InitError(Exception):
    """Init cannot finish; ``exit_code`` is 2 (bad input) or 3 (object store unreachable)."""

    def __init__(self, message: str, exit_code: int = EXIT_BAD_INPUT):
        super().__init__(message)
        self.exit_code = exit_code


def _storage_error(what: str, e: StorageError) -> InitError:
    return InitError(f"{what}: {e}", EXIT_STORAGE if e.retryable else EXIT_BAD_INPUT)


def restore_code(store: ObjectStore, code_file: str, code_dir: str | os.PathLike, limits: Limits = CODE_LIMITS,
                 bot_id: str = "") -> None:
    """Download and extract the code archive into ``code_dir`` (replacing what was there)."""
    try:
        key = layout.code_key(code_file)
    except ValueError as e:
        raise InitError(f"CODE_FILE: {e}") from e
    where = f"{layout.CODE_BUCKET}/{key}"
    with tempfile.TemporaryDirectory(prefix="the0-init-") as tmp:
        archive = os.path.join(tmp, "code")
        try:
            found = store.get_file(layout.CODE_BUCKET, key, archive)
        except StorageError as e:
            raise _storage_error(f"cannot download code {where}", e) from e
        if not found:
            raise InitError(f"code object {where} not found in the object store: was the bot's code uploaded, "
                            f"and is CODE_FILE (custom.filePath) right?")
        try:
            res = extract_archive(archive, code_dir, limits, kind="code")
        except ArchiveError as e:
            raise InitError(f"code archive {where} refused: {e}") from e
    event(log, "init.code_restored", bot_id=bot_id, key=where, files=res.files, bytes=res.bytes)


def restore_state(store: ObjectStore, bot_id: str, state_dir: str | os.PathLike,
                  limits: Limits = STATE_LIMITS) -> bool:
    """Restore the bot's saved state into ``state_dir``; False (and an existing empty dir) on a first run."""
    key = layout.state_key(bot_id)
    where = f"{layout.STATE_BUCKET}/{key}"
    Path(state_dir).mkdir(parents=True, exist_ok=True)
    try:
        data = store.get_bytes(layout.STATE_BUCKET, key)
    except StorageError as e:
        raise _storage_error(f"cannot download state {where}", e) from e
    if data is None:
        event(log, "init.state_absent", bot_id=bot_id, key=where)
        return False
    try:
        res = extract_tar(data, state_dir, limits, kind="state")
    except ArchiveError as e:
        raise InitError(f"state archive {where} refused: {e}; the saved state is kept: fix or delete that "
                        f"object to start the bot") from e
    event(log, "init.state_restored", bot_id=bot_id, key=where, files=res.files, bytes=res.bytes)
    return True


def prepare(bot_id: str, code_file: str, runtime: str, entrypoint: str, code_dir: str | os.PathLike,
            state_dir: str | os.PathLike, store: ObjectStore, limits: InitLimits | None = None,
            **programs: str) -> list[str]:
    """Restore code and state, and return the bot's argv (run with cwd = code_dir). Raises InitError.

    ``limits`` defaults to ``InitLimits.from_env(os.environ)``; ``programs`` (python=, node=, dotnet=,
    java=) override the interpreters of daemon.entrypoints.command_for.
    """
    limits = limits or InitLimits.from_env(os.environ)
    try:
        layout.check_bot_id(bot_id)
        normalize_runtime(runtime)
    except (ValueError, EntrypointError) as e:
        raise InitError(str(e)) from e
    restore_code(store, code_file, code_dir, limits.code, bot_id=bot_id)
    restore_state(store, bot_id, state_dir, limits.state)
    try:
        return command_for(runtime, entrypoint, code_dir, **programs)
    except EntrypointError as e:
        raise InitError(str(e)) from e


def _required(env: dict, name: str) -> str:
    value = (env.get(name) or "").strip()
    if not value:
        raise InitError(f"{name} is not set: daemon init needs BOT_ID, RUNTIME, ENTRYPOINT and CODE_FILE")
    return value


def run(env: dict) -> list[str]:
    """Everything ``main`` does, from an environment mapping; returns the argv. Raises InitError."""
    bot_id = _required(env, "BOT_ID")
    runtime = _required(env, "RUNTIME")
    entrypoint = _required(env, "ENTRYPOINT")
    code_file = _required(env, "CODE_FILE")
    code_dir = env.get("CODE_PATH") or layout.CODE_PATH
    state_dir = env.get("STATE_PATH") or layout.STATE_PATH
    logs_dir = env.get("LOGS_PATH") or layout.LOGS_PATH
    script = env.get("ENTRYPOINT_SCRIPT") or DEFAULT_ENTRYPOINT_SCRIPT
    programs = {"python": env["THE0_PYTHON"]} if env.get("THE0_PYTHON") else {}
    try:
        from daemon.storage import from_env

        store = from_env(env)
    except StorageError as e:
        raise _storage_error("object store configuration", e) from e
    except ValueError as e:
        raise InitError(f"object store configuration: {e}") from e
    try:
        Path(logs_dir).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InitError(f"LOGS_PATH {logs_dir}: cannot create it: {e}") from e
    argv = prepare(bot_id, code_file, runtime, entrypoint, code_dir, state_dir, store, InitLimits.from_env(env),
                   **programs)
    try:
        write_entrypoint(runtime, entrypoint, code_dir, script, logs_dir=logs_dir, **programs)
    except OSError as e:
        raise InitError(f"ENTRYPOINT_SCRIPT {script}: cannot write it: {e}") from e
    except EntrypointError as e:
        raise InitError(str(e)) from e
    event(log, "init.ready", bot_id=bot_id, runtime=runtime, script=script, 
          argv=[a if a != PY_WRAPPER else "<wrapper>" for a in argv])
    return argv


def main(argv: list[str] | None = None, env: dict | None = None) -> int:
    """``python -m daemon init``: 0 ready, 2 bad input, 3 object store unreachable."""
    args = list(argv or [])
    if args and args[0] in ("-h", "--help"):
        print(__doc__)
        return EXIT_OK
    if args:
        print(f"daemon init: unexpected arguments {args}: configure it with environment variables", file=sys.stderr)
        return EXIT_BAD_INPUT
    env = dict(os.environ if env is None else env)
    try:
        run(env)
    except InitError as e:
        event(log, "init.failed", level=logging.ERROR, bot_id=env.get("BOT_ID", ""), error=str(e),
              exit_code=e.exit_code)
        print(f"daemon init: {e}", file=sys.stderr, flush=True)
        return e.exit_code
    return EXIT_OK
