"""`python -m ftlib ...` is the `ftlib` command."""
import sys

from ftlib.cli import main

sys.exit(main())
