#!/bin/sh
# A cron-like loop: run the job every $TICK_EVERY seconds (default 60).
#   litefs-route run --while-primary -- sh examples/background/cron.sh
# Under the supervisor it runs only on the primary; on SIGTERM sh exits at
# once and the supervisor removes what is left of its process group (the sleep).
set -eu
while :; do
    python -m examples.background.jobs cron
    sleep "${TICK_EVERY:-60}"
done
