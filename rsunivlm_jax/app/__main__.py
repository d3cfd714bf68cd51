import sys

from rsunivlm_jax.app.cli import main

sys.exit(main())
