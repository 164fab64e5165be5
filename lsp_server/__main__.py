"""`python -m lsp_server`: run the language server (see lsp_server.cli)."""

import os
import sys


def _drop_working_directory() -> None:
    """Take the working directory (which `-m` puts first on sys.path) off the import path.

    Editors start the server in the user's workspace: its `model.py`, `secrets.py` or
    `torch.py` must not stand in for ours or the standard library's. Running from this
    project's own source tree keeps it, since the packages are found there. Only `-P`
    (PYTHONSAFEPATH=1) also protects the import of `lsp_server` itself, which happens
    before this runs.
    """
    if getattr(sys.flags, "safe_path", False) or not sys.path:  # -P (3.11+)
        return
    here = os.path.realpath(os.getcwd())
    if os.path.realpath(sys.path[0] or os.curdir) != here:
        return
    if os.path.dirname(os.path.dirname(os.path.realpath(__file__))) != here:
        del sys.path[0]


_drop_working_directory()

from .cli import main  # noqa: E402  (only after the working directory is off sys.path)

sys.exit(main())
