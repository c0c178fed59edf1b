import sys

from ss4rec.cli import main

sys.exit(main())
