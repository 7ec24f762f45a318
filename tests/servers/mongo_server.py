"""Runs a MongoDB wire-protocol server (mongoeco[wire]) for the tests; executed by a Python >= 3.13 venv.

Usage: ``python mongo_server.py --port PORT [--data FILE]``. Listens on 127.0.0.1:PORT with an SQLite
engine at FILE (data survives a stop/start on the same file) or in memory when FILE is absent, prints
``ready <port>`` on stdout once it listens, and runs until SIGTERM or SIGINT, then closes cleanly.

This file must not import anything from the project: it runs under another interpreter (see
tests/servers/mongo.py, which starts it).
"""
from __future__ import annotations

import argparse
import asyncio
import signal
import sys


async def serve(port: int, data: str | None) -> None:
    from mongoeco.engines import SQLiteEngine
    from mongoeco.wire import AsyncMongoEcoProxyServer

    engine = SQLiteEngine(data) if data else None
    server = AsyncMongoEcoProxyServer(engine=engine, host="127.0.0.1", port=port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    address = await server.start()
    print(f"ready {address.port}", flush=True)
    try:
        await stop.wait()
    finally:
        await server.close()


def main(argv: list[str] | None = None) -> int:
    if sys.version_info < (3, 13):
        print("mongo_server.py needs Python >= 3.13 (mongoeco[wire])", file=sys.stderr)
        return 2
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--data", default=None, help="SQLite file for the data (default: in memory)")
    args = p.parse_args(argv)
    asyncio.run(serve(args.port, args.data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
