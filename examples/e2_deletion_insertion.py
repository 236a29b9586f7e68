"""E2 of the paper: Deletion and Insertion with P = 10 and P = 30 steps, one search over all images
(enumerative) against one search per predicted class (class-based decomposition).

    python examples/e2_deletion_insertion.py                 # built-in benchmark
    python examples/e2_deletion_insertion.py --model resnet50 --weights r50.pth --images photos/ --time 600
"""

from __future__ import annotations

from _experiment import load, parser, search, summary


def main() -> None:
    args = parser(__doc__.splitlines()[0], default_time=30).parse_args()
    model, data = load(args)
    rows = []
    for metric in ("deletion", "insertion"):
        for steps in (10, 30):
            for per_class in (False, True):
                name = f"{metric}-P{steps}-{'per-class' if per_class else 'enumerative'}"
                r = search(args, model, data, name, metric=metric, metric_options={"steps": steps},
                           grammar="g2", per_class=per_class)
                print(r.table())
                rows.append((name, r))
    print("\nE2 summary (Deletion and Insertion: higher is better)\n" + summary(rows))


if __name__ == "__main__":
    main()
