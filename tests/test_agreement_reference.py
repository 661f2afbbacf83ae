"""Our Krippendorff's alpha against the reference implementation (the `krippendorff` package), for
nominal data with missing values: random raters x units matrices, some cells unrated."""

from __future__ import annotations

import math
import random

import pytest

from finegrained import agreement

krippendorff = pytest.importorskip("krippendorff", reason="the krippendorff package is a dev extra (pip install -e '.[dev]')")
np = pytest.importorskip("numpy")


def random_matrix(rng: random.Random, n_raters: int, n_units: int, n_values: int, p_missing: float) -> list[list[float]]:
    """raters x units, float codes 0..n_values-1, NaN where a rater did not rate the unit."""
    return [
        [math.nan if rng.random() < p_missing else float(rng.randrange(n_values)) for _ in range(n_units)]
        for _ in range(n_raters)
    ]


def units_of(matrix: list[list[float]]) -> list[list[int]]:
    """Per unit, the values of the raters who rated it: the input form of our function."""
    return [[int(row[u]) for row in matrix if not math.isnan(row[u])] for u in range(len(matrix[0]))]


@pytest.mark.parametrize("seed", range(40))
def test_alpha_equals_the_reference_package_with_missing_values(seed):
    rng = random.Random(seed)
    matrix = random_matrix(
        rng, n_raters=rng.randint(2, 5), n_units=rng.randint(3, 30), n_values=rng.randint(2, 4), p_missing=rng.choice([0.0, 0.2, 0.5])
    )
    ours = agreement.krippendorff_alpha(units_of(matrix))
    pairable_values = {v for unit in units_of(matrix) if len(unit) >= 2 for v in unit}
    if len(pairable_values) < 2:
        # One value among pairable units: alpha is undefined (0/0); we say 1.0 when nobody disagreed.
        assert ours == pytest.approx(1.0) or math.isnan(ours)
        return
    reference = krippendorff.alpha(reliability_data=np.array(matrix), level_of_measurement="nominal")
    assert ours == pytest.approx(reference, abs=1e-9)


def test_alpha_on_binary_segment_labels_of_three_annotators():
    # Segment labels as `finegrained agreement` builds them: 0/1 per segment, an annotator missing on some.
    matrix = [[1, 0, 0, 1, math.nan, 0], [1, 0, 1, 1, 0, math.nan], [math.nan, 0, 1, 1, 0, 0]]
    matrix = [[float(v) for v in row] for row in matrix]
    reference = krippendorff.alpha(reliability_data=np.array(matrix), level_of_measurement="nominal")
    assert agreement.krippendorff_alpha(units_of(matrix)) == pytest.approx(reference, abs=1e-12)
