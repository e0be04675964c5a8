"""Management commands that scripts can rely on: bad input is one line on stderr and a non-zero
exit, never a usage dump or a traceback."""

import sys
from decimal import Decimal, InvalidOperation

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import OperationalError, ProgrammingError

from saas_platform import actors
from saas_platform.errors import PlatformError


def decimal_amount(value: str) -> Decimal:
    """An argparse type for amounts: exact decimals, never floats."""
    try:
        return Decimal(value)
    except InvalidOperation:
        raise ValueError(value) from None


decimal_amount.__name__ = "decimal amount"  # argparse names the type in its error


def validation_message(error: ValidationError) -> str:
    """One line naming every bad field."""
    if hasattr(error, "message_dict"):
        return "; ".join(
            f"{name}: {' '.join(messages)}" for name, messages in error.message_dict.items()
        )
    return " ".join(error.messages)


class OneLineErrorParser(CommandParser):
    def error(self, message):
        if self.called_from_command_line:
            sys.stderr.write(f"{self.prog}: error: {message}\n")
            sys.exit(2)
        raise CommandError(f"Error: {message}")


class ScriptableCommand(BaseCommand):
    """A command with subcommands (`tenant create ...`) that reports bad input on one line."""

    def create_parser(self, prog_name, subcommand, **kwargs):
        parser = super().create_parser(prog_name, subcommand, **kwargs)
        parser.__class__ = OneLineErrorParser
        return parser

    @staticmethod
    def add_actions(parser):
        """The subcommands (`create`, `list`, ...), each reporting bad input on one line too."""
        return parser.add_subparsers(
            dest="action", required=True, metavar="ACTION", parser_class=OneLineErrorParser
        )

    def handle(self, *args, action, **options):
        return getattr(self, f"handle_{action}")(options)

    def execute(self, *args, **options):
        try:
            # What the command changes is the audit log's `cli`, with the OS user.
            with actors.acting_as(actors.command_actor()):
                return super().execute(*args, **options)
        except ValidationError as error:
            raise CommandError(validation_message(error)) from None
        except PlatformError as error:  # a service refused: its message is for the user
            raise CommandError(error.message) from None
        except (OperationalError, ProgrammingError) as error:
            # Most often a database never migrated or not reachable: say so, not a traceback.
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
            raise CommandError(
                f"the database is not usable ({first_line}); is it reachable, and has "
                "`manage.py migrate` been run?"
            ) from None


def format_table(rows: list[tuple[str, ...]]) -> list[str]:
    """Left-aligned columns, for listings that people read and scripts split on whitespace."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]


def first_or_fail(queryset, message: str):
    """The first object of `queryset`, or the command fails with `message` (one line)."""
    found = queryset.first()
    if found is None:
        raise CommandError(message)
    return found
