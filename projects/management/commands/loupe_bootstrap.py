"""First start of an embedded instance: an admin account and a credentials file for scripts.

Idempotent: with a credentials file whose token still authenticates, it only refreshes
LOUPE_URL (the port may have changed); otherwise it creates (or reuses) the ``admin`` superuser
and issues a new token.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandParser
from django.db import transaction

from projects import services
from projects.credentials import read_credentials, write_credentials
from projects.models import ApiToken

ADMIN_USERNAME = "admin"


class Command(BaseCommand):
    help = "Create the embedded instance's admin account and credentials file (idempotent)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--url", required=True)
        parser.add_argument("--credentials", required=True, type=Path)

    def handle(self, *args: Any, **options: Any) -> None:
        path: Path = options["credentials"]
        current = read_credentials(path)
        token = current.get("LOUPE_TOKEN", "")
        valid = (
            bool(token)
            and ApiToken.objects.filter(
                digest=services.api_token_digest(token), revoked_at__isnull=True, user__is_active=True
            ).exists()
        )
        if not valid:
            with transaction.atomic():
                UserModel = get_user_model()
                admin = UserModel.objects.filter(username=ADMIN_USERNAME).first()
                if admin is None:
                    admin = services.user_create(actor=None, username=ADMIN_USERNAME, is_superuser=True)
                _, token = services.api_token_create(user=admin, name="loupe up")
            self.stdout.write(f"issued a new API token for {ADMIN_USERNAME}")
        write_credentials(path, {"LOUPE_URL": options["url"], "LOUPE_TOKEN": token})
