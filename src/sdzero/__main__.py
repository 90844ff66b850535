import sys

from sdzero.cli import main

sys.exit(main())
