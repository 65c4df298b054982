"""`python -m detain` is the `detain` command."""

import sys

from .cli.main import main

sys.exit(main())
