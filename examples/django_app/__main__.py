"""``python -m examples.django_app [--replica-of PRIMARY_ID] [--port 8000]``"""

from examples.local_mount import prepare

args = prepare(default_port=8000)

from wsgiref.simple_server import make_server  # noqa: E402

from examples.django_app.wsgi import application  # noqa: E402  (reads the environment prepare() set)

with make_server("127.0.0.1", args.port, application) as server:
    server.serve_forever()
