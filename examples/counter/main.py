"""A realtime bot: keeps a counter in its state and logs each tick. Survives restarts through its state."""
import json
import os
import time


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (FileNotFoundError, json.JSONDecodeError):
        return {"count": 0}


def save(path, state):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(state, f)
    os.replace(tmp, path)  # atomic: the daemon never sees a torn state.json


def main(bot_id, config):
    path = os.path.join(os.environ.get("STATE_DIR", "/state"), "state.json")
    state = load(path)
    interval = float(config.get("interval", 1.0))
    print(json.dumps({"event": "started", "bot": bot_id, "count": state["count"]}), flush=True)
    while True:
        state["count"] += 1
        save(path, state)
        print(json.dumps({"event": "tick", "count": state["count"]}), flush=True)
        time.sleep(interval)
