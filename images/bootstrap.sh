#!/bin/sh
# the0 bot bootstrap: the command of every bot container (and of the process backend's bot group).
#
#   1. python3 -m daemon init      code + state restored, entrypoint script written (exit code kept on failure:
#                                  2 bad input, 3 object store unreachable)
#   2. python3 -m daemon sync &    mirrors state and logs while the bot runs
#   3. the bot, via the entrypoint script, with an environment scrubbed of every credential
#      (MINIO_*, NATS_*, AWS_*, MONGO_*, THE0_*, *SECRET*, *PASSWORD*, *TOKEN*, *ACCESS_KEY*, *CREDENTIAL*,
#      *API_KEY*); stdout and stderr appended to $LOGS_PATH/bot.log
#   4. SIGTERM / SIGINT are forwarded to the bot as SIGTERM (a background job of a non-interactive shell
#      ignores SIGINT, so TERM is what reaches it), and the bot is waited for
#   5. $LOGS_PATH/.done receives the bot's exit code: sync does its final sync and exits; it is waited for
#      at most $THE0_SYNC_WAIT seconds (default 30), then stopped
#   6. exit with the bot's exit code (128+N when a signal N ended it)
#
# Environment: BOT_ID, RUNTIME, ENTRYPOINT, CODE_FILE, BOT_CONFIG, IS_SCHEDULED, CODE_PATH, STATE_PATH,
# LOGS_PATH, the object store's variables (see daemon/init.py); THE0_PYTHON (default python3),
# ENTRYPOINT_SCRIPT (default /var/the0/entrypoint.sh), THE0_SYNC_WAIT.
set -u

PY="${THE0_PYTHON:-python3}"
CODE_PATH="${CODE_PATH:-/bot}"
STATE_PATH="${STATE_PATH:-/state}"
LOGS_PATH="${LOGS_PATH:-/var/the0/logs}"
ENTRYPOINT_SCRIPT="${ENTRYPOINT_SCRIPT:-/var/the0/entrypoint.sh}"
SYNC_WAIT="${THE0_SYNC_WAIT:-30}"
export CODE_PATH STATE_PATH LOGS_PATH ENTRYPOINT_SCRIPT

log() { printf '{"event":"bootstrap.%s","bot_id":"%s"%s}\n' "$1" "${BOT_ID:-}" "${2:-}" >&2; }

BOT_PID=""
SYNC_PID=""
GOT_SIGNAL=0
IN_TIMER=0   # 1 inside the sync timer subshell (see step 5): TERM then cancels the timer
CANCEL=0
SLEEP_PID=""
forward() {
    GOT_SIGNAL=1
    if [ "$IN_TIMER" = 1 ]; then
        CANCEL=1
        [ -n "$SLEEP_PID" ] && kill "$SLEEP_PID" 2>/dev/null
        return 0
    fi
    if [ -n "$BOT_PID" ]; then
        kill -TERM "$BOT_PID" 2>/dev/null
    fi
}
trap forward TERM INT

# wait_pid PID: wait until the child PID has ended; sets STATUS. A trapped signal interrupts `wait`
# without reaping the child, so then (and only then: the pid is still ours) wait again if it lives.
wait_pid() {
    STATUS=0
    while :; do
        GOT_SIGNAL=0
        wait "$1"
        STATUS=$?
        if [ "$GOT_SIGNAL" = 1 ] && kill -0 "$1" 2>/dev/null; then
            continue
        fi
        break
    done
}

# 1. init
"$PY" -m daemon init
rc=$?
if [ "$rc" -ne 0 ]; then
    log init_failed ",\"exit_code\":$rc"
    exit "$rc"
fi

mkdir -p "$LOGS_PATH" || exit 2
rm -f "$LOGS_PATH/.done" "$LOGS_PATH/.done.tmp"

# 2. sync in the background
"$PY" -m daemon sync &
SYNC_PID=$!

# 3. the bot, without credentials
if [ "${IS_SCHEDULED:-false}" = "true" ] || [ "${IS_SCHEDULED:-}" = "1" ]; then
    BOT_TYPE=scheduled
else
    BOT_TYPE=realtime
fi
set --
for name in $(env | sed -n 's/^\([A-Za-z_][A-Za-z0-9_]*\)=.*/\1/p'); do
    case "$name" in
        MINIO_*|NATS_*|AWS_*|MONGO_*|THE0_*|*SECRET*|*PASSWORD*|*TOKEN*|*ACCESS_KEY*|*CREDENTIAL*|*API_KEY*)
            set -- "$@" -u "$name" ;;
    esac
done
# THE0_SUPERVISED=1: the entrypoint script just execs the bot (the script unsets it first).
env "$@" THE0_SUPERVISED=1 STATE_DIR="$STATE_PATH" CODE_MOUNT_DIR="$CODE_PATH" BOT_TYPE="$BOT_TYPE" \
    "$ENTRYPOINT_SCRIPT" >>"$LOGS_PATH/bot.log" 2>&1 </dev/null &
BOT_PID=$!
log bot_started ",\"pid\":$BOT_PID"

# 4. wait for the bot
wait_pid "$BOT_PID"
BOT_RC=$STATUS
BOT_PID=""
log bot_exited ",\"exit_code\":$BOT_RC"

# 5. tell sync the bot is done, wait for its final sync (bounded)
printf '%s\n' "$BOT_RC" >"$LOGS_PATH/.done.tmp" && mv -f "$LOGS_PATH/.done.tmp" "$LOGS_PATH/.done"
# The timer subshell is told apart by IN_TIMER, set before the fork: a TERM that reaches it before its
# own trap is set is then still a cancel (whichever way the shell treats traps in a new subshell).
IN_TIMER=1
(
    trap forward TERM
    nap() {
        [ "$CANCEL" = 1 ] && exit 0
        sleep "$1" </dev/null >/dev/null 2>&1 &
        SLEEP_PID=$!
        [ "$CANCEL" = 1 ] && { kill "$SLEEP_PID" 2>/dev/null; exit 0; }
        wait "$SLEEP_PID"
        SLEEP_PID=""
        [ "$CANCEL" = 1 ] && exit 0
    }
    nap "$SYNC_WAIT"
    kill -TERM "$SYNC_PID" 2>/dev/null || exit 0
    printf '{"event":"bootstrap.sync_timeout","bot_id":"%s","waited_s":%s}\n' "${BOT_ID:-}" "$SYNC_WAIT" >&2
    nap 5
    kill -KILL "$SYNC_PID" 2>/dev/null
) &
TIMER_PID=$!
IN_TIMER=0
wait_pid "$SYNC_PID"
SYNC_RC=$STATUS
kill -TERM "$TIMER_PID" 2>/dev/null
wait "$TIMER_PID" 2>/dev/null
log done ",\"exit_code\":$BOT_RC,\"sync_exit_code\":$SYNC_RC"

# 6.
exit "$BOT_RC"
