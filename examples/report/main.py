"""A scheduled bot: each run counts itself in its state, logs a line and exits 0."""
import json
import os


def main(bot_id, config):
    path = os.path.join(os.environ.get("STATE_DIR", "/state"), "state.json")
    try:
        with open(path) as f:
            state = json.load(f)
    except (FileNotFoundError, json.JSONDecodeError):
        state = {"runs": 0}
    state["runs"] += 1
    with open(path + ".tmp", "w") as f:
        json.dump(state, f)
    os.replace(path + ".tmp", path)
    print(json.dumps({"event": "report", "bot": bot_id, "runs": state["runs"], "symbol": config.get("symbol", "BTC")}), flush=True)
