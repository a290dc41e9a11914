"""The Django app: its ORM on ``django.db.backends.postgresql`` (psycopg 3); ``LITEFS_ROUTE["source"] = "postgres"``."""
