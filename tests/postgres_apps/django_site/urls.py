from __future__ import annotations

from django.urls import path

from tests.postgres_apps.django_site import views

urlpatterns = [
    path("items", views.items),
    path("oops", views.oops),
    path("boom", views.boom),
    path("state", views.state),
]
