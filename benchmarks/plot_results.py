"""Merge the summaries of several `gladiff bench` result files (one card) into one table and plot.
Each DiG/DiT ratio still comes from a single run: summaries are only put side by side. Where several
files hold the same (size, resolution, batch, work), the file given last wins (so order the files from
the least to the most complete runs, e.g. runs that tried both compile scopes last); a summary row
without a DiT measurement (a run cut short) is skipped.

    python benchmarks/plot_results.py benchmarks/results/archive/model_bench_H200_*.json --out /tmp/model_bench_H200.png

(``docs/performance.md``, "How to reproduce", gives the command of the current merged sweep.)
"""
import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from gladiff.bench.common import command_line  # noqa: E402
from gladiff.bench.model import format_rows, plot_rows  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("files", nargs="+")
    p.add_argument("--out", required=True, help="PNG path")
    p.add_argument("--json", default=None, help="also write the merged table (each row naming its file) here")
    args = p.parse_args(argv)
    merged, cards = {}, set()
    for f in args.files:
        d = json.loads(Path(f).read_text())
        cards.add(d.get("card"))
        for s in d.get("summary", []):
            if s.get("dit_img_s") is None:
                continue  # a run cut short before DiT was measured: no ratio
            key = (s["size"], s["res"], s["batch"], s["work"])
            merged[key] = dict(s, file=Path(f).name)
    if len(cards) > 1:
        raise SystemExit(f"results from different cards {cards}: not merged")
    summary = [merged[k] for k in sorted(merged)]
    card = cards.pop()
    print(f"card: {card}\n" + format_rows(summary))
    for s in summary:
        print(f"  {s['size']} {s['res']} b{s['batch']} {s['work']}: {s['file']}")
    if args.json:
        Path(args.json).write_text(json.dumps(dict(card=card, command=command_line(), files=args.files,
                                                   summary=summary), indent=1))
        print(f"wrote {args.json}")
    if plot_rows(summary, args.out):
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
