"""``python -m examples.starlette_app [--replica-of PRIMARY_ID] [--port 8001]``"""

import uvicorn

from examples.local_mount import prepare

args = prepare(default_port=8001)
uvicorn.run("examples.starlette_app.app:app", host="127.0.0.1", port=args.port)
