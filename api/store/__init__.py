"""The control plane's system of record: a psycopg 3 async pool and yoyo migrations over PostgreSQL.

`Store` owns the pool (opened in the app's lifespan, closed at shutdown) and hands out connections and
transactions; domain modules keep their own SQL. `migrate` applies the SQL files in ``migrations/`` (api-core
owns 0001-0049, the sandbox side 0050-0099) and is a no-op when everything is applied.
"""

from wrenn.api.store._migrations import MIGRATIONS_DIR, migrate, pending_migrations
from wrenn.api.store._pool import Store, psycopg_url, yoyo_url

__all__ = ["MIGRATIONS_DIR", "Store", "migrate", "pending_migrations", "psycopg_url", "yoyo_url"]
