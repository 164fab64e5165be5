"""`python -m lsp_server`: run the language server (see lsp_server.cli)."""

import sys

from .cli import main

sys.exit(main())
