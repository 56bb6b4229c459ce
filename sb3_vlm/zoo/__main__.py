"""``python -m sb3_vlm.zoo``: RL Zoo's command with the guided algorithms."""

import sys

from sb3_vlm.zoo import main

sys.exit(main())
