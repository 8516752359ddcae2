"""`python -m proximo` runs the command line (torchrun launches ranks as `-m proximo train ...`)."""
import sys

from proximo.cli import main

sys.exit(main())
