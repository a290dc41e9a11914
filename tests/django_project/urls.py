from __future__ import annotations

from django.urls import path

from tests.django_project import views

urlpatterns = [
    path("function", views.function_view),
    path("class", views.ClassView.as_view()),
    path("swallowed", views.swallowed),
    path("template", views.template),
    path("template-response", views.template_response),
    path("drf", views.DRFView.as_view()),
    path("instance/<str:instance_id>", views.instance),
    path("boom", views.boom),
    path("write", views.write),
    path("read", views.read),
    path("unguarded-write", views.unguarded_write),
    path("counters", views.counters),
    path("upload", views.upload),
    path("metrics", views.metrics),
]
