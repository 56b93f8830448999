"""Create a user account and print a personal API token for it (shown once)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from projects import services
from projects.exceptions import DomainError


class Command(BaseCommand):
    help = "Create a user and print a one-time API token for it."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument("--email", default="")
        parser.add_argument("--superuser", action="store_true", help="an instance administrator")
        parser.add_argument("--token-name", default="cli")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            with transaction.atomic():
                user = services.user_create(
                    actor=None,
                    username=options["username"],
                    email=options["email"],
                    is_superuser=options["superuser"],
                )
                _, clear = services.api_token_create(user=user, name=options["token_name"])
        except DomainError as exc:
            raise CommandError(exc.message) from exc
        self.stdout.write(f"created user {user.get_username()}\nLOUPE_TOKEN={clear}")
