"""`python -m fm ...` is the `fm` command."""
import sys

from fm.cli import main

sys.exit(main())
