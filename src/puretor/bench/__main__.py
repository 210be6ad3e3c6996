import sys

from puretor.bench.cli import main

sys.exit(main())
