"""The use cases: one module per `phx` command, each taking a `Config` and an `Environment` and
returning a typed result (the Python API and the CLI call the same functions).

A use case opens the repository of a target (`context.py`), then leaves the work to the layers
below: the repository's engines (repo/: walker, reader, prune, checker, replicate), the sources
that read a workspace and its databases (sources/) and the sinks that write them back (sinks/).
Docs: docs/architecture.md.
"""

# `phx` command -> the module (below `phoenix_backup`) that holds its use case. A command of a
# group not listed on its own is in its group's module (`key add` -> ops.key).
COMMANDS: dict[str, str] = {
    "archive": "ops.archive",
    "backup": "ops.backup",
    "completion": "cli.cmd_completion",  # the shell's completion script: about the command line itself
    "demo": "ops.demo",
    "diff": "ops.diff",
    "doctor": "ops.doctor",
    "drill": "ops.drill",
    "dump": "ops.dump",
    "export": "ops.export",
    "forget": "ops.forget",
    "import": "ops.import_",
    "init": "ops.init",
    "key": "ops.key",
    "key rotate": "ops.key_rotate",
    "list": "ops.list",
    "ls": "ops.ls",
    "prune": "ops.prune",
    "repair": "ops.repair",
    "restore": "ops.restore",
    "restore --merge": "ops.merge",
    "restore --at": "ops.pitr",  # also list --timeline / --at and drill --at
    "schedule": "schedule",  # no repository involved: the scheduler package itself
    "status": "ops.status",
    "sync": "ops.sync",
    "unlock": "ops.unlock",
    "verify": "ops.verify",
    "watch": "ops.watch",
}

# The modules of ops/ that are not a command of their own, and what they serve.
SHARED: dict[str, str] = {
    "ops.compact": "forget (and retention after backup): capture days of `phx watch` compacted into snapshots",
    "ops.context": "what every use case takes: the caller's environment, credentials, the opened repository",
    "ops.db_backup": "backup: the PostgreSQL and Redis streams saved into the repository",
    "ops.hooks": "backup: hooks.preBackup and hooks.postBackup around it",
    "ops.safety": "restore and restore --merge: the safety snapshot taken before anything changes",
    "ops.selection": "backup, restore, import and watch: what a backup of a scope reads",
    "ops.watch_child": "watch: its snapshots (bases, the files') taken in a child process",
    "ops.watch_files": "watch: file-system events, debounced, then a snapshot of the files",
}
