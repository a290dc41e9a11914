"""Both examples, in real server processes, as primary and as replica."""

from __future__ import annotations

import httpx
import pytest

from examples.conftest import PRIMARY_ID, REPLICA_ID, ServeExample


@pytest.mark.parametrize(
    "server",
    ["gunicorn", "uvicorn", "django-gunicorn", "django-uvicorn", "django-runserver"],
    ids=["flask-gunicorn", "starlette-uvicorn", "django-gunicorn", "django-uvicorn", "django-runserver"],
)
def test_example_routes_writes_to_the_primary(serve_example: ServeExample, server: str) -> None:
    with serve_example(server, "primary") as primary_url:
        with httpx.Client(base_url=primary_url) as primary:
            page = primary.get("/")
            assert page.status_code == 200
            assert page.headers["fly-primary-instance"] == PRIMARY_ID
            signed = primary.post("/entries", data={"text": "hello <world>"})
            assert (signed.status_code, signed.headers["location"]) == (303, "/")
            assert "hello &lt;world&gt;" in primary.get("/").text
            assert primary.get("/visit", follow_redirects=True).status_code == 200
            assert "Visits: 1." in primary.get("/").text

        with serve_example(server, "replica") as replica_url, httpx.Client(base_url=replica_url) as replica:
            page = replica.get("/")  # reads run on the replica
            assert page.status_code == 200
            assert page.headers["fly-instance"] == REPLICA_ID
            assert "hello &lt;world&gt;" in page.text
            for response in (replica.post("/entries", data={"text": "x"}), replica.get("/visit")):
                assert response.status_code == 409
                assert (
                    response.headers["fly-replay"]
                    == f"instance={PRIMARY_ID};state=litefs-route-hop-1;timeout=5s;fallback=force_self"
                )
            assert replica.get("/healthz").text == "ok"
            assert "Visits: 1." in replica.get("/").text  # the replayed visit did not run here
