import sys

from imgcrunch.cli import main

sys.exit(main())
