import sys

from orchestrator.data.cli import main

sys.exit(main())
