"""Settings of the main job (`rsunivlm-demo`, docs/demo.md): variants "full" (default), "quick" and "ci".

    rsunivlm-demo --config configs/demo.py:quick --set train.stage1_steps=200

The settings themselves, with the reason for each choice, are
`rsunivlm_jax.train.config_lib.demo_config` (the demo's built-in default); copy this file and
change fields to make a variant of your own.
"""
from rsunivlm_jax.train.config_lib import demo_config


def get_config(arg=None):
    return demo_config(arg)
