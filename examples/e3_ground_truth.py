"""E3 of the paper: ground-truth overlap and SCH against object masks.

The built-in benchmark's images come with exact masks; with your own images give ``--masks DIR``.

    python examples/e3_ground_truth.py                       # built-in benchmark
    python examples/e3_ground_truth.py --model resnet50 --weights r50.pth --images photos/ --masks masks/
"""

from __future__ import annotations

from _experiment import load, parser, search, summary

from sycam_dsl.synthesis import DataOptions, OutputOptions


def main() -> None:
    args = parser(__doc__.splitlines()[0], default_time=45).parse_args()
    model, data = load(args)
    if data.masks is None:
        raise SystemExit("E3 needs object masks: give --masks DIR")
    rows = []
    for metric in ("gt_overlap", "sch"):
        r = search(args, model, data, metric, metric=metric, grammar="g2", data=DataOptions(masks=data.masks),
                   output=OutputOptions(report_metrics=["gt_overlap", "sch"]))
        print(r.table())
        rows.append((metric, r))
    print("\nE3 summary (higher is better)\n" + summary(rows))


if __name__ == "__main__":
    main()
