"""Optimal one-to-one matching of rows (tracks) to columns (detections) by IoU.

:func:`match` solves the assignment that maximises the summed IoU
(``scipy.optimize.linear_sum_assignment`` on ``1 - iou``), then drops the pairs below the
threshold. A greedy "best pair first" loop gets crossings wrong: when object A's best match is
B's detection by a hair, greedy gives it away and B is left with a poor one or none; the optimal
assignment keeps both.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy.optimize import linear_sum_assignment


@dataclass(frozen=True)
class Matches:
    """The result of :func:`match`.

    Attributes:
        pairs: ``(K, 2)`` int64 ``(row, col)`` matched pairs, by row.
        unmatched_rows: ``(R,)`` int64 rows without a match, ascending.
        unmatched_cols: ``(C,)`` int64 columns without a match, ascending.
    """

    pairs: np.ndarray
    unmatched_rows: np.ndarray
    unmatched_cols: np.ndarray


def match(iou: npt.ArrayLike, min_iou: float) -> Matches:
    """Match rows to columns one-to-one, maximising the summed IoU of the kept pairs.

    Args:
        iou: ``(R, C)`` IoU (or any similarity in ``[0, 1]``); rectangular and empty are fine.
        min_iou: pairs with IoU below this are not matches (their row and column stay
            unmatched).

    Raises:
        ValueError: ``iou`` not 2-D, or with NaN values.
    """
    iou = np.asarray(iou, dtype=np.float64)
    if iou.ndim != 2:
        raise ValueError(f"expected an (R, C) IoU matrix, got shape {iou.shape}")
    if np.isnan(iou).any():
        raise ValueError("IoU matrix has NaN values")
    rows, cols = iou.shape
    pairs = np.zeros((0, 2), np.int64)
    if rows and cols:
        # Pairs below the threshold cannot match: make them worthless to the solver, so it
        # never trades a good pair for one that is then dropped.
        valid = iou >= min_iou
        r, c = linear_sum_assignment(np.where(valid, 1.0 - iou, 1.0))
        keep = valid[r, c]
        pairs = np.stack([r[keep], c[keep]], axis=1).astype(np.int64)
    free_rows, free_cols = np.ones(rows, bool), np.ones(cols, bool)
    free_rows[pairs[:, 0]] = False
    free_cols[pairs[:, 1]] = False
    return Matches(pairs, np.flatnonzero(free_rows), np.flatnonzero(free_cols))
