#!/bin/sh
# The "app" process group's command (litefs.yml's last exec entry): the web server, plus the
# singletons under `litefs-route run --while-primary` (started here on every app Machine; each
# runs its command only while this Machine holds the lease).
set -eu
litefs-route run --while-primary --grace 20 -- \
    celery -A examples.background.celery_app beat -s /tmp/celerybeat-schedule &
beat=$!
# On shutdown LiteFS signals this shell: stop the supervisor (it stops beat) before LiteFS releases the lease.
trap 'kill -TERM "$beat" "$web" 2>/dev/null; wait "$beat"; wait "$web"' TERM INT
gunicorn -b 0.0.0.0:8080 examples.flask_app.app:app &
web=$!
wait "$web"
