from __future__ import annotations

from django.contrib import admin

from examples.django_app.models import Entry

admin.site.register(Entry)
