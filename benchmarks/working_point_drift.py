"""How far the default working point drifts after `forget` and `partial_fit`.

The held-out scores behind the threshold are carried over from the model before the update (no rows are
kept to re-score them); this measures the share of fresh in-distribution rows kept afterwards against the
0.95 target, on 8 well-separated Gaussian classes in 8 dimensions, 300 rows each, 3 seeds.

    .venv/bin/python -m benchmarks.working_point_drift
"""

import numpy as np

from openworld import OpenWorld

CLASSES, DIMENSIONS, ROWS, FRESH_ROWS = 8, 8, 300, 1000


def kept_share(model, rows) -> float:
    return float(np.mean(model.predict(rows) != model.unknown_label))


def main() -> None:
    print("seed | " + " | ".join(f"forget {k}" for k in (1, 2, 4, 6)) + " | " + " | ".join(f"add {k}" for k in (1, 2, 4, 6)))
    for seed in range(3):
        rng = np.random.default_rng(seed)
        centers = rng.normal(0, 3, (CLASSES, DIMENSIONS))
        X = np.vstack([c + rng.normal(size=(ROWS, DIMENSIONS)) for c in centers])
        y = np.repeat(np.arange(CLASSES), ROWS)
        fresh = np.vstack([c + rng.normal(size=(FRESH_ROWS, DIMENSIONS)) for c in centers])
        fresh_y = np.repeat(np.arange(CLASSES), FRESH_ROWS)
        cells = []
        for gone in (1, 2, 4, 6):
            model = OpenWorld(random_state=0).fit(X, y).forget(list(range(CLASSES - gone, CLASSES)))
            cells.append(kept_share(model, fresh[fresh_y < CLASSES - gone]))
        for added in (1, 2, 4, 6):
            first = y < CLASSES - added
            model = OpenWorld(random_state=0).fit(X[first], y[first]).partial_fit(X[~first], y[~first])
            cells.append(kept_share(model, fresh))
        print(f"{seed} | " + " | ".join(f"{v:.3f}" for v in cells))


if __name__ == "__main__":
    main()
