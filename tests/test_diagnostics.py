import math

import pytest
import torch

from lossdiag.functional.breakdown import loss_distribution, top_share
from lossdiag.models.recorder import SampleRecorder, deduplicate


def test_top_share_counts_the_worst_one_percent() -> None:
    losses = torch.cat([torch.full((99,), 0.1), torch.tensor([30.0])])
    assert top_share(losses, 0.01).item() == pytest.approx(30.0 / (30.0 + 9.9))


def test_loss_distribution_values() -> None:
    losses = torch.arange(1, 101, dtype=torch.float32)  # 1..100
    stats = loss_distribution(losses, cap=95.5)
    assert stats["loss_median"].item() == pytest.approx(50.5)
    assert stats["loss_p90"].item() == pytest.approx(torch.quantile(losses.double(), 0.9).item())
    assert stats["loss_max"].item() == 100
    assert stats["n_above_cap"].item() == 5
    assert stats["loss_top1pct_share"].item() == pytest.approx(100 / 5050)


def test_loss_distribution_survives_non_finite_values() -> None:
    stats = loss_distribution(torch.tensor([1.0, float("inf"), float("nan"), 2.0]), cap=5.0)
    assert stats["loss_max"].item() == 2.0
    assert stats["n_above_cap"].item() == 2
    all_bad = loss_distribution(torch.tensor([float("nan")]), cap=5.0)
    assert math.isnan(all_bad["loss_median"].item())


def test_deduplicate_keeps_each_index_once_sorted() -> None:
    index = torch.tensor([4, 1, 3, 1, 0, 2, 4])
    keep = deduplicate(index)
    assert index[keep].tolist() == [0, 1, 2, 3, 4]


def test_sample_recorder_gathers_and_deduplicates() -> None:
    rec = SampleRecorder()
    rec.update(torch.tensor([2, 0]), torch.tensor([1, 0]), torch.tensor([[0.0, 1.0], [1.0, 0.0]]))
    rec.update(
        torch.tensor([1, 2]), torch.tensor([1, 1]), torch.tensor([[0.0, 2.0], [0.0, 1.0]])
    )  # 2 is padding
    out = rec.compute()
    assert out.index.tolist() == [0, 1, 2]
    assert out.target.tolist() == [0, 1, 1]
    assert torch.allclose(out.logits[1], torch.tensor([0.0, 2.0]))
    assert torch.allclose(
        out.cross_entropy, torch.nn.functional.cross_entropy(out.logits, out.target, reduction="none")
    )


def test_equal_width_histograms_are_numpy_histograms_per_row() -> None:
    import numpy as np

    from lossdiag.functional.breakdown import equal_width_histograms

    rng = np.random.default_rng(0)
    values = rng.exponential(1.0, (5, 150))
    values[1, 3], values[3, 0] = np.nan, np.inf  # left out
    values[2] = 2.0  # one value: numpy's range value +- 0.5
    values[4] = np.nan  # nothing to count
    h = equal_width_histograms(values, 64)
    on_edges = np.round(rng.uniform(0, 1, (20, 30)), 1)  # tenths in 10 bins: values on the edges (0.3, 0.7, ...)
    on_edges[:, 0], on_edges[:, 1] = 0.0, 1.0
    for row, counts in enumerate(equal_width_histograms(on_edges, 10)["counts"]):
        np.testing.assert_array_equal(counts, np.histogram(on_edges[row], bins=10)[0])
    for row in range(4):
        finite = values[row][np.isfinite(values[row])]
        counts, edges = np.histogram(finite, bins=64)
        np.testing.assert_array_equal(h["counts"][row], counts)
        np.testing.assert_allclose(h["edges"][row], edges)
        assert h["num"][row] == finite.size and h["sum"][row] == pytest.approx(finite.sum())
        assert h["min"][row] == finite.min() and h["max"][row] == finite.max()
    assert h["num"][4] == 0 and h["counts"][4].sum() == 0
