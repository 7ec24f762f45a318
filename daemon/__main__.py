"""Command line of the in-container daemon: ``python -m daemon init`` or ``python -m daemon sync``.

``init`` prepares code, state and the entrypoint script (daemon.init); ``sync`` runs the state and log
syncer until the bot is done (daemon.sync, imported only when asked for, so init never depends on it).
Logs are JSON lines on stderr (level from THE0_LOG_LEVEL, default INFO).
"""
from __future__ import annotations

import os
import sys

USAGE = "usage: python -m daemon init|sync [args]\n  init  restore code and state, write the entrypoint\n" \
        "  sync  mirror state and logs to object storage until the bot is done"


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE, file=sys.stderr if not args else sys.stdout)
        return 2 if not args else 0
    from daemon import jsonlog

    level = os.environ.get("THE0_LOG_LEVEL", "INFO").upper()
    jsonlog.setup(level if level in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL") else "INFO")
    cmd, rest = args[0], args[1:]
    if cmd == "init":
        from daemon import init

        return init.main(rest)
    if cmd == "sync":
        from daemon import sync

        return sync.main(rest)
    print(f"daemon: unknown command {cmd!r}\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
