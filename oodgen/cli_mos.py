"""Command line of expert MOS studies: ``python -m oodgen mos {create-study,summary}``.

Registered by :func:`oodgen.cli.build_parser` through :func:`add_mos_commands`. Errors are
:class:`oodgen.ratings.RatingError` (a ValueError): one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

def _generated_json(paths: list[str]) -> dict[str, Any]:
    """``generated.json`` of the first folder that has one (written by ``python -m oodgen generate``), or {}."""
    from .generated import MANIFEST

    for p in map(Path, paths):
        if (p / MANIFEST).is_file():
            try:
                return json.loads((p / MANIFEST).read_text(encoding="utf-8"))
            except (OSError, ValueError):
                return {}
    return {}


def cmd_mos_create_study(args: argparse.Namespace) -> int:
    from .pipeline import collect_study_files
    from .ratings import StudyItem, create_study

    real = collect_study_files(args.real)
    generated = collect_study_files(args.generated)
    manifest = _generated_json(args.generated)
    method = args.method if args.method is not None else str((manifest.get("generation") or {}).get("method") or "")
    model = args.model if args.model is not None else str(manifest.get("model") or "")
    items = [StudyItem(p, "real") for p in real] + [StudyItem(p, "generated", method, model) for p in generated]
    study = create_study(args.home, args.id, args.domain, items, instructions=args.instructions, repeat_fraction=args.repeat_fraction,
                         seed=args.seed, display_size=args.display_size)
    print(f"created study {study.study_id}: {len(study.items)} items ({len(real)} real, {len(generated)} generated"
          f"{', method ' + method if method else ''}), {study.n_repeats} repeated per rater, in {study.root}", file=sys.stderr)
    return 0


def _fmt(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def cmd_mos_summary(args: argparse.Namespace) -> int:
    from .clitext import print_table
    from .ratings import RatingError, summarize

    summary = summarize(Path(args.ratings))
    if args.json:
        print(json.dumps(summary.to_json(), indent=2, allow_nan=False))
        return 0
    if not summary.groups:
        raise RatingError(f"{args.ratings} holds no ratings yet")
    print(f"{args.ratings}: {summary.n_ratings} ratings (first ratings per condition; repeats only for consistency)")
    print_table([{"study": g.study, "domain": g.domain, "method": g.method or "-", "source": g.source, "n": g.n,
                   "MOS +- std": g.mos_pm_std, "95% CI": f"[{_fmt(g.ci95_low)}, {_fmt(g.ci95_high)}]" + ("*" if g.ci95_clipped else "")}
                  for g in summary.groups])
    clipped = any(g.ci95_clipped for g in summary.groups)
    print("95% CI: t interval of the mean (ITU-T P.1401)"
          + ("; * clipped to the 1-5 scale (the unclipped ends are ci95_t_low / ci95_t_high in --json)" if clipped else ""))
    alpha = summary.krippendorff_alpha
    print(f"\nKrippendorff's alpha (ordinal, first ratings): {_fmt(alpha, 3) if alpha is not None else 'undefined (needs 2 raters on an item and some variation)'}")
    print()
    print_table([{"study": r.study, "rater": r.rater, "n": r.n, "mean": _fmt(r.mean), "repeats": r.n_repeats,
                   "repeat |diff|": _fmt(r.repeat_mad), "repeat agree": _fmt(r.repeat_agreement),
                   "flag": "straight-liner" if r.straight_liner else ""} for r in summary.raters])
    return 0


def add_mos_commands(sub: Any) -> None:
    """Add ``mos create-study`` and ``mos summary`` to the subcommands ``sub`` of the main parser."""
    p = sub.add_parser("mos", help="expert Mean Opinion Score studies: create a blinded study, summarize ratings")
    mos = p.add_subparsers(dest="mos_command", required=True, metavar="MOS_COMMAND")

    s = mos.add_parser("summary", help="MOS +- std, N and 95%% CI per condition, rater consistency and Krippendorff's alpha")
    s.add_argument("ratings", metavar="RATINGS.csv", help="ratings CSV (default location: HOME/ratings/ratings.csv)")
    s.add_argument("--json", action="store_true", help="print one JSON object (groups, krippendorff_alpha, raters, ...)")
    s.set_defaults(func=cmd_mos_summary)

    s = mos.add_parser("create-study", help="copy real and generated images into a new blinded study")
    s.add_argument("--home", required=True, metavar="DIR", help="MOS home folder (studies/ and ratings/ live there)")
    s.add_argument("--id", required=True, help="study id: 1-64 letters, digits, '_' or '-'")
    s.add_argument("--domain", required=True, help="domain name shown in summaries, e.g. galaxy")
    s.add_argument("--real", nargs="+", required=True, metavar="PATH", help="real reference images: files or folders")
    s.add_argument("--generated", nargs="+", required=True, metavar="PATH", help="generated images: files or folders (e.g. the output of `generate`)")
    s.add_argument("--method", default=None, help="generation method of the generated images (default: from generated.json, else empty)")
    s.add_argument("--model", default=None, help="model of the generated images (default: from generated.json, else empty)")
    s.add_argument("--instructions", default="", help="text shown to raters above the 1-5 scale")
    s.add_argument("--repeat-fraction", type=float, default=0.1, help="fraction of items each rater sees twice, for consistency (default: 0.1, max 0.5)")
    s.add_argument("--seed", type=int, default=0, help="seed of the blinded ids and of every rater's order (default: 0)")
    s.add_argument("--display-size", type=int, default=None, metavar="PX", help="centre-crop and resize every item to PX x PX, so sizes do not reveal the source")
    s.set_defaults(func=cmd_mos_create_study)
