"""Tiny WSGI and ASGI apps the dev-cluster tests run as real server processes."""
