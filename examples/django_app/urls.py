from __future__ import annotations

from django.contrib import admin
from django.urls import path

from examples.django_app import views

urlpatterns = [
    path("", views.index),
    path("entries", views.add_entry),
    path("visit", views.visit),
    path("healthz", views.healthz),
    path("admin/", admin.site.urls),
]
