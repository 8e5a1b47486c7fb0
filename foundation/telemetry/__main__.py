"""``python -m foundation.telemetry``: print the event catalogue's table (docs/telemetry.md)."""

from foundation.telemetry.catalogue import markdown_table

print(markdown_table())
