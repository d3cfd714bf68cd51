"""`python -m tools.convert_torch` from a source checkout: the same command as `rsunivlm-convert`
(the converter library is `rsunivlm_jax.convert`)."""
import sys

from rsunivlm_jax.convert.__main__ import main

if __name__ == "__main__":
    sys.exit(main())
