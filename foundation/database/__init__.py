"""The database layer: URLs, engines, the schema, migrations and the change feed."""

from foundation.database.engine import create_async_engine, create_engine
from foundation.database.schema import metadata
from foundation.database.url import DatabaseURL, mask_url

__all__ = ["DatabaseURL", "create_async_engine", "create_engine", "mask_url", "metadata"]
