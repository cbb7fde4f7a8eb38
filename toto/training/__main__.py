"""``python -m toto.training ARGS``: ``toto-compiled finetune ARGS`` (see :mod:`toto.commands.finetune`).

Under ``torchrun`` (``torchrun --nproc-per-node=K -m toto.training ...``) every process trains
and rank 0 writes ``--output``.
"""

import sys

from ..commands.finetune import main

if __name__ == "__main__":
    sys.exit(main())
