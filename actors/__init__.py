"""the0 runtime service: a pykka supervision tree that keeps bots running (python -m actors.main)."""
