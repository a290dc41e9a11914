"""What the example does when its server starts: migrate, where that is allowed.

On Fly, run migrations from ``litefs.yml`` (``exec: python manage.py migrate``
with ``if-candidate: true``, see docs/migrations.md); the example does it here
so that one command runs it. Only the primary can write: replicas skip it.
"""

from __future__ import annotations

from django.core.management import call_command

from litefs_route import get_instance_info


def migrate_if_primary() -> None:
    if get_instance_info().is_primary:
        call_command("migrate", interactive=False, verbosity=0)
