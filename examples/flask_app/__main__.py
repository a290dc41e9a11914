"""``python -m examples.flask_app [--replica-of PRIMARY_ID] [--port 8000]``"""

from examples.local_mount import prepare

args = prepare(default_port=8000)

from examples.flask_app.app import app  # noqa: E402  (reads the environment prepare() set)

app.run(host="127.0.0.1", port=args.port)
