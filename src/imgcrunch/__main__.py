import sys

from imgcrunch.cli import main

# Guarded: codec worker processes are spawned, and each imports this module again.
if __name__ == "__main__":
    sys.exit(main())
