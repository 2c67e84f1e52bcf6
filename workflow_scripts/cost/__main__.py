import sys

from workflow_scripts.cost.project import main

sys.exit(main())
