"""``python -m ecgkt.cli`` (what torchrun launches): the same entry point as the ``ecgkt`` script."""
import sys

from . import main

sys.exit(main())
