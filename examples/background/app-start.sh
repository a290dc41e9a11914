#!/bin/sh
# The "app" process group's command (litefs.yml's last exec entry): the web server, plus the
# singletons under `litefs-route run --while-primary` (started here on every app Machine; each
# runs its command only while this Machine holds the lease). $BIND: the web server's address.
set -eu
litefs-route run --while-primary --grace 20 -- \
    celery -A examples.background.celery_app beat -s "${BEAT_SCHEDULE:-/tmp/celerybeat-schedule}" &
beat=$!
gunicorn -b "${BIND:-0.0.0.0:8080}" examples.background.web_tasks:app &
web=$!
# On shutdown LiteFS signals this shell: stop both (the supervisor stops beat), then exit,
# so LiteFS releases the lease only once beat is gone.
trap 'kill -TERM "$beat" "$web" 2>/dev/null; wait "$beat" "$web"; exit 0' TERM INT
wait "$web"
