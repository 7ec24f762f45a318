"""Desired-state stores behind one interface (``actors.stores.base.Store``).

``open_store(config)`` picks the store: MongoDB when ``MONGO_URI`` is set (``config.mongo_uri``), else the
embedded SQLite file ``<THE0_DATA_DIR>/runtime.db``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from actors.stores.base import BOTS, COLLECTIONS, SCHEDULES, Store, StoreError, StoreUnavailable

if TYPE_CHECKING:
    from actors.config import Config

__all__ = ["BOTS", "COLLECTIONS", "SCHEDULES", "Store", "StoreError", "StoreUnavailable", "open_store"]

SQLITE_FILE = "runtime.db"


def open_store(config: "Config") -> Store:
    """The store ``config`` asks for. Opening never waits for MongoDB (it may be down at start-up)."""
    if config.mongo_uri:
        from actors.stores.mongo import MongoStore

        return MongoStore(config.mongo_uri, bots_db=config.mongo_bots_db, schedules_db=config.mongo_schedules_db)
    from actors.stores.sqlite import SqliteStore

    return SqliteStore(config.data_dir / SQLITE_FILE)
