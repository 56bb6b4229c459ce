import sys

from sb3_vlm.cli import main

sys.exit(main())
