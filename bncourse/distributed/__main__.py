"""``python -m bncourse.distributed bench``: the scaling benchmark (see :mod:`.benchmark`)."""

from .benchmark import main

raise SystemExit(main())
