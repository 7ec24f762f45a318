"""Operator CLI over NATS: ``python -m actors.ctl list|status|restart|run|logs|deploy``.

Talks to a running runtime through ``the0.runtime.ctl.*`` (request/reply) and, for ``deploy``, puts the
zipped bot into the object store and publishes the0's created event, exactly as the0's API would.
Human-readable tables by default, ``--json`` for scripts. Exit code 0 on ok, 1 when the runtime said no,
2 on bad usage, 3 when the runtime cannot be reached.
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import io
import json
import os
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

from actors.messages import RUNTIMES

DEFAULT_URL = "nats://127.0.0.1:4222"


class CtlError(Exception):
    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


async def _connect(url: str) -> Any:
    import nats

    async def quiet(_e: Exception) -> None:  # the failure is reported once, below
        pass

    try:
        return await asyncio.wait_for(
            nats.connect(url, connect_timeout=3, max_reconnect_attempts=0, allow_reconnect=False, error_cb=quiet),
            timeout=5,
        )
    except Exception as e:  # noqa: BLE001
        why = str(e) or "no answer within 5 s"
        raise CtlError(f"cannot reach NATS at {url}: {why}; is the runtime running? (set NATS_URL)", 3) from None


async def request(url: str, subject: str, payload: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
    nc = await _connect(url)
    try:
        try:
            msg = await nc.request(subject, json.dumps(payload).encode(), timeout=timeout)
        except Exception as e:  # noqa: BLE001 - no responders / timeout
            raise CtlError(f"no reply on {subject} within {timeout}s ({type(e).__name__}): is the runtime running?", 3) from None
        return json.loads(msg.data)
    finally:
        await nc.close()


def zip_dir(src: Path) -> bytes:
    """Deterministic zip of a folder (sorted, fixed timestamps), skipping caches and VCS folders."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(p for p in src.rglob("*") if p.is_file()):
            rel = path.relative_to(src)
            if any(part in (".git", "__pycache__", ".venv", "node_modules") for part in rel.parts):
                continue
            info = zipfile.ZipInfo(str(rel), date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = (path.stat().st_mode & 0o777) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, path.read_bytes())
    return buf.getvalue()


def deploy(args: argparse.Namespace) -> dict[str, Any]:
    from daemon import layout, storage

    src = Path(args.dir)
    if not src.is_dir():
        raise CtlError(f"{src} is not a folder", 2)
    if args.runtime not in RUNTIMES:
        raise CtlError(f"unknown runtime {args.runtime!r}; use one of {', '.join(RUNTIMES)}", 2)
    try:
        user_config = json.loads(args.config) if args.config else {}
    except json.JSONDecodeError as e:
        raise CtlError(f"--config is not JSON: {e}", 2) from None
    if not isinstance(user_config, dict):
        raise CtlError("--config must be a JSON object", 2)
    bot_id = args.id or src.resolve().name.replace("_", "-")
    try:
        layout.check_bot_id(bot_id)
    except ValueError as e:
        raise CtlError(f"{e} (pass --id)", 2) from None
    blob = zip_dir(src)
    digest = hashlib.sha256(blob).hexdigest()[:12]
    file_path = f"{bot_id}/{digest}.zip"
    store = storage.from_env()
    store.put_bytes(layout.CODE_BUCKET, layout.code_key(file_path), blob, "application/zip")
    if args.schedule:
        user_config["schedule"] = args.schedule
        if args.timezone:
            user_config["timezone"] = args.timezone
    doc = {
        "id": bot_id,
        "config": user_config,
        "custom": {
            "version": args.version or digest,
            "filePath": file_path,
            "config": {"runtime": args.runtime, "entrypoints": {"bot": args.entrypoint}},
        },
    }
    kind = "bot-schedule" if args.schedule else "bot"
    reply = asyncio.run(request(args.url, f"the0.{kind}.created", doc))
    if reply.get("ok") and reply.get("created") is False:
        reply = asyncio.run(request(args.url, f"the0.{kind}.updated", doc))
    reply.setdefault("id", bot_id)
    reply["file_path"] = file_path
    return reply


def _fmt_time(ts: Any) -> str:
    if not ts:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(ts)))


def print_table(rows: list[dict[str, Any]], cols: list[str]) -> None:
    widths = {c: max(len(c), *(len(str(r.get(c, "-") if r.get(c) is not None else "-")) for r in rows)) for c in cols} if rows else {c: len(c) for c in cols}
    print("  ".join(c.upper().ljust(widths[c]) for c in cols))
    for r in rows:
        print("  ".join(str(r.get(c) if r.get(c) is not None else "-").ljust(widths[c]) for c in cols))


def render(cmd: str, reply: dict[str, Any]) -> None:
    if cmd == "list":
        rows = [dict(b, next_run=_fmt_time(b.get("next_run")) if b.get("next_run") else None) for b in reply["bots"]]
        print_table(rows, ["id", "kind", "state", "restarts", "last_exit_code", "next_run"])
    elif cmd == "status":
        for k, v in sorted(reply["status"].items()):
            if k.endswith("_at") or k == "next_run":
                v = _fmt_time(v)
            print(f"{k:18} {v}")
        if reply.get("runs"):
            print()
            runs = [dict(r, scheduled_at=_fmt_time(r.get("scheduled_at"))) for r in reply["runs"]]
            print_table(runs, ["run_id", "scheduled_at", "exit_code", "reason"])
    elif cmd == "logs":
        for line in reply["lines"]:
            print(line.get("line", line) if isinstance(line, dict) else line)
    else:
        print(json.dumps(reply, indent=2))


async def follow_logs(url: str, bot_id: str) -> None:
    nc = await _connect(url)
    done = asyncio.Event()

    async def on_msg(msg: Any) -> None:
        for raw in msg.data.decode(errors="replace").splitlines():
            try:
                rec = json.loads(raw)
                print(rec.get("line", raw) if isinstance(rec, dict) else raw, flush=True)
            except json.JSONDecodeError:
                print(raw, flush=True)

    await nc.subscribe(f"the0.bot.logs.{bot_id}", cb=on_msg)
    try:
        await done.wait()
    finally:
        await nc.close()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m actors.ctl", description="Operate the0 runtime over NATS.")
    p.add_argument("--url", default=os.environ.get("NATS_URL", DEFAULT_URL), help="NATS URL (env NATS_URL)")
    p.add_argument("--json", action="store_true", help="print the raw JSON reply")
    p.add_argument("--timeout", type=float, default=10.0)
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="every bot and schedule with its state")
    for name, helptext in (("status", "one bot's status (and a schedule's runs)"), ("restart", "restart a realtime bot"),
                           ("run", "fire a schedule now")):
        sp = sub.add_parser(name, help=helptext)
        sp.add_argument("id")
    lp = sub.add_parser("logs", help="a bot's shipped log lines")
    lp.add_argument("id")
    lp.add_argument("--tail", type=int, default=100)
    lp.add_argument("-f", "--follow", action="store_true", help="then follow live lines")
    dp = sub.add_parser("deploy", help="zip a folder, upload it and create (or update) the bot")
    dp.add_argument("dir")
    dp.add_argument("--runtime", required=True, choices=RUNTIMES)
    dp.add_argument("--entrypoint", default="main.py")
    dp.add_argument("--schedule", help="cron expression: makes it a scheduled bot")
    dp.add_argument("--timezone", help="IANA zone of the schedule (default UTC)")
    dp.add_argument("--config", help="the bot's config as a JSON object")
    dp.add_argument("--id", help="bot id (default: the folder's name)")
    dp.add_argument("--version")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.cmd == "deploy":
            reply = deploy(args)
        else:
            payload: dict[str, Any] = {} if args.cmd == "list" else {"id": args.id}
            if args.cmd == "logs":
                payload["tail"] = args.tail
            reply = asyncio.run(request(args.url, f"the0.runtime.ctl.{args.cmd}", payload, args.timeout))
        if not reply.get("ok"):
            if args.json:
                print(json.dumps(reply))
            raise CtlError(reply.get("error", "the runtime refused the request"))
        if args.json:
            print(json.dumps(reply, default=str))
        else:
            render(args.cmd, reply)
        if args.cmd == "logs" and args.follow:
            asyncio.run(follow_logs(args.url, args.id))
        return 0
    except CtlError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
