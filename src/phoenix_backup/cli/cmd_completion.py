"""`phx completion`."""

from __future__ import annotations

import click
from click.shell_completion import get_completion_class

from phoenix_backup.cli.app import Out, cli, common
from phoenix_backup.errors import UsageError
from phoenix_backup.ops.context import Environment

SHELLS = ("bash", "zsh", "fish")


@cli.command()
@click.argument("shell", type=click.Choice(SHELLS))
@common
def completion(out: Out, envx: Environment, config_path: str | None, shell: str) -> None:
    """Print the shell code that completes `phx` commands, options and snapshot ids.

    Commands and options are completed everywhere; snapshot ids (ID, --backup) from the
    repository of the config (or --repo), local or S3/R2, without asking for a passphrase.

    \b
    bash: add to ~/.bashrc:            eval "$(phx completion bash)"
    zsh:  add to ~/.zshrc:             eval "$(phx completion zsh)"
    fish: write it once:               phx completion fish > ~/.config/fish/completions/phx.fish

    Example: phx completion bash > ~/.local/share/bash-completion/completions/phx
    """
    complete = get_completion_class(shell)
    if complete is None:  # click knows every name in SHELLS; a future click might not
        raise UsageError(f"no completion for {shell}; use one of {', '.join(SHELLS)}")
    script = complete(cli, {}, "phx", "_PHX_COMPLETE").source()
    # The script is the data this command exists to print: --quiet keeps it; --json wraps it.
    out.result({"shell": shell, "script": script}, script.rstrip("\n"), data=True)
