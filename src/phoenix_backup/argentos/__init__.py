"""What Phoenix knows of ArgentOS itself, apart from its default paths (config/defaults.py): the
alignment manifest that the identity files are checked against, and the gateway that a restore
stops and starts. Used by the restore and by the sample workspaces."""
