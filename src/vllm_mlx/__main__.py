"""`python -m vllm_mlx` = the `vllm-mlx` command."""

import sys

from .cli import main

sys.exit(main())
