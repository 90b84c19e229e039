"""Phoenix: backup and restore for AI agent workspaces.

The Python API is the product; the `phx` command is a thin layer over it. Every function takes a
validated `Config` (see `phoenix_backup.config.load_config`) and an `Environment`, and returns a
typed result object.
"""

__version__ = "0.1.0"
