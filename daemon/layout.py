"""Buckets, object keys and in-container paths: the only place they are spelled.

Everything that names where a bot's code, state or logs live goes through here, so the runtime, the
daemon and the log reader can never disagree.
"""
from __future__ import annotations

import re
import time

CODE_BUCKET = "custom-bots"
STATE_BUCKET = "bot-state"
LOGS_BUCKET = "bot-logs"

STATE_OBJECT = "state.tar.gz"

# Paths inside a bot container (the0's names); the process backend maps them under a work dir.
CODE_PATH = "/bot"
STATE_PATH = "/state"
LOGS_PATH = "/var/the0/logs"
BOT_LOG_FILE = "bot.log"

_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


def check_bot_id(bot_id: str) -> str:
    """Return ``bot_id`` if it is safe in keys, paths, container and pod names; raise ValueError otherwise."""
    if not isinstance(bot_id, str) or not _SAFE_ID.match(bot_id):
        raise ValueError(
            f"invalid bot id {bot_id!r}: use 1-64 letters, digits, '_' or '-', starting with a letter or digit"
        )
    return bot_id


def code_key(file_path: str) -> str:
    """Key of a bot's code zip in CODE_BUCKET (the0's ``custom.filePath``)."""
    key = file_path.lstrip("/")
    if not key or ".." in key.split("/"):
        raise ValueError(f"invalid code file path {file_path!r}")
    return key


def state_key(bot_id: str) -> str:
    return f"{check_bot_id(bot_id)}/{STATE_OBJECT}"


def logs_prefix(bot_id: str, day: str | None = None) -> str:
    """Prefix of a bot's log objects, optionally for one UTC day ``YYYYMMDD``."""
    base = f"logs/{check_bot_id(bot_id)}/"
    return base + (f"{day}/" if day else "")


def log_key(bot_id: str, start_offset: int, at: float | None = None, epoch: int = 0) -> str:
    """Key of one shipped log batch. Sorting keys of a day sorts batches by (epoch, offset).

    ``epoch`` counts log-file generations (truncation/rotation) so offsets restarting at 0 still sort
    after the previous generation's batches. Keys are deterministic in (bot, day, epoch, offset): a batch
    re-shipped after a crash overwrites itself instead of doubling.
    """
    day = time.strftime("%Y%m%d", time.gmtime(time.time() if at is None else at))
    return f"{logs_prefix(bot_id, day)}{epoch:06d}-{start_offset:016d}.ndjson"


def run_id_for(schedule_id: str, scheduled_at: float) -> str:
    """Deterministic id of one scheduled run: the same schedule and fire time always give the same id."""
    return f"{check_bot_id(schedule_id)}-{int(scheduled_at)}"


def logs_subject(bot_id: str) -> str:
    return f"the0.bot.logs.{bot_id}"
