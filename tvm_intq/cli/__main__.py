"""``python -m tvm_intq.cli``: the same as the ``tvm-intq`` command."""

import sys

from tvm_intq.cli import main

sys.exit(main())
