from __future__ import annotations

from django.db import models

from tests.postgres_apps import common


class Item(models.Model):
    """A row of ``items`` (made by the tests: common.SCHEMA)."""

    id = models.BigAutoField(primary_key=True)
    name = models.TextField()
    instance = models.TextField(default=common.INSTANCE)

    class Meta:
        managed = False
        db_table = "items"
