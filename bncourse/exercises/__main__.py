"""``python -m bncourse.exercises grade NOTEBOOK... --json OUT``: see :mod:`.grading`.

``python -m bncourse.exercises progress GRADES.json --out OUT`` turns a grading's JSON into
the progress file that the site's "Your progress" page imports.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import grading


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bncourse.exercises",
        description="Grade notebooks with the course's exercise checker.")
    sub = parser.add_subparsers(dest="command", required=True)
    grade = sub.add_parser(
        "grade", help="run notebooks and judge every exercise they check",
        description=grading.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    grading.add_arguments(grade)
    progress = sub.add_parser(
        "progress", help="turn a grading's JSON into the site's progress file")
    progress.add_argument("grades", type=Path, metavar="GRADES.json")
    progress.add_argument("--out", type=Path, required=True, metavar="OUT")
    progress.add_argument("--notebook", action="append", metavar="PATH",
                          help="only this notebook's verdicts (may be repeated)")
    args = parser.parse_args(argv)
    if args.command == "grade":
        return grading.run_command(args)
    try:
        results = json.loads(args.grades.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        parser.error(f"cannot read the grading JSON {args.grades}: {e}")
    if args.notebook:
        missing = [p for p in args.notebook if p not in results]
        if missing:
            parser.error(f"not in {args.grades}: {', '.join(missing)}; it holds "
                         f"{', '.join(results)}")
        results = {p: results[p] for p in args.notebook}
    args.out.write_text(json.dumps(grading.to_progress(results), indent=1) + "\n",
                        encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
