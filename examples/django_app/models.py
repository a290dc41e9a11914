from __future__ import annotations

from django.db import models


class Entry(models.Model):
    text = models.CharField(max_length=500)
    written_on = models.CharField(max_length=64)

    def __str__(self) -> str:
        return str(self.text)


class Visits(models.Model):
    count = models.IntegerField(default=0)
