"""`python -m rsunivlm_jax.lora` = `rsunivlm-lora`."""
import sys

from rsunivlm_jax.lora.cli import main

sys.exit(main())
