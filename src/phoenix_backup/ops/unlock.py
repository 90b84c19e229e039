"""`phx unlock`: remove the locks crashed runs left, after saying whose they were."""

from __future__ import annotations

from phoenix_backup.config import Config
from phoenix_backup.ops.context import Environment, open_repository
from phoenix_backup.repo.locks import LockInfo
from phoenix_backup.repo.repository import Repository


def unlock(cfg: Config, envx: Environment, *, remove_all: bool = False) -> list[LockInfo]:
    repo: Repository = open_repository(cfg, envx)
    return repo.locks.unlock(remove_all=remove_all)
