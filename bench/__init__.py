"""Benchmarks of litefs-route against a bare app and a naive middleware (see docs/benchmarks.md)."""
