"""Writers, the mirror of sources/: a snapshot's files, SQLite stores, PostgreSQL and Redis
databases written back to disk and servers, safely."""
