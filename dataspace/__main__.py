import sys

from dataspace.cli import main

sys.exit(main())
