"""E1 of the paper: Average Drop with grammar G1, then G2.

G1 (gradient terminals) should rediscover the positive-gradient GradCAM++ form (``pgrads``, or an
expression scoring as well); G2 (adding ScoreCAM and AblationCAM terminals) should do at least as well as ScoreCAM.

    python examples/e1_average_drop.py                       # built-in benchmark
    python examples/e1_average_drop.py --model resnet50 --weights r50.pth --images photos/
"""

from __future__ import annotations

from _experiment import load, parser, search, summary


def main() -> None:
    args = parser(__doc__.splitlines()[0], default_time=45).parse_args()
    model, data = load(args)
    rows = []
    for grammar in ("g1", "g2"):
        r = search(args, model, data, f"average_drop-{grammar}", metric="average_drop", grammar=grammar)
        print(r.table())
        rows.append((f"average_drop, {grammar}", r))
    print("\nE1 summary (Average Drop: lower is better)\n" + summary(rows))


if __name__ == "__main__":
    main()
