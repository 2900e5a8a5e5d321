import sys

from omniglue_sfm.cli import main

sys.exit(main())
