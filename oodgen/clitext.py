"""Plain-text output shared by the command line's modules (:mod:`oodgen.cli`, :mod:`oodgen.cli_mos`)."""

from __future__ import annotations

import sys


def print_table(rows: list[dict], file=None) -> None:
    """Rows of equal keys as an aligned text table (stdout by default)."""
    if not rows:
        return
    file = file or sys.stdout
    keys = list(rows[0])
    widths = [max(len(str(k)), *(len(str(r[k])) for r in rows)) for k in keys]
    print("  ".join(str(k).ljust(w) for k, w in zip(keys, widths)), file=file)
    print("  ".join("-" * w for w in widths), file=file)
    for r in rows:
        print("  ".join(str(r[k]).ljust(w) for k, w in zip(keys, widths)), file=file)
