import sys

from appliance.bench.cli import main

sys.exit(main())
