"""dreamode.classify and dreamode.baselines: shapes, batch independence, a tiny overfit, the loop's bookkeeping."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from dreamode.baselines import GRUD, GRUDelta, LSTMForwardFill, forward_fill, last_valid, make_baseline, time_deltas
from dreamode.classify import (
    SequenceClassifier,
    accuracy_from_logits,
    count_parameters,
    evaluate,
    train_classifier,
)
from dreamode.data import IrregularSeries, SeriesDataset, collate_series, pad_series

I, K = 3, 3


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: one thread is fastest, and far faster on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_series(n: int, seed: int = 0, nan_rate: float = 0.1) -> list[IrregularSeries]:
    """Labelled series with per-sample irregular times, lengths 3..9 and some missing channels;
    the class shifts the mean so that it can be learnt."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for k in range(n):
        L = int(torch.randint(3, 10, (1,), generator=g))
        times = torch.cumsum(0.05 + 0.1 * torch.rand(L, generator=g, dtype=torch.float64), 0)
        label = k % K
        values = torch.randn(L, I, generator=g) * 0.5 + (label - 1)
        values[torch.rand(L, I, generator=g) < nan_rate] = math.nan
        values[:, 0] = torch.where(torch.isnan(values[:, 0]), torch.zeros(L), values[:, 0])  # no fully empty rows
        out.append(IrregularSeries(times, values, label))
    return out


def all_models(hidden: int = 8) -> dict[str, nn.Module]:
    torch.manual_seed(0)
    return {
        "dream-euler": SequenceClassifier(I, K, hidden, rank=2),
        "dream-rk4-2layers": SequenceClassifier(I, K, hidden, rank=2, solver="rk4", num_layers=2),
        "gru-dt": GRUDelta(I, K, hidden),
        "gru-d": GRUD(I, K, hidden),
        "lstm-ffill": LSTMForwardFill(I, K, hidden),
    }


@pytest.mark.parametrize("name", list(all_models()))
def test_logits_shape_and_batch_independence(name):
    model = all_models()[name].eval()
    series = make_series(6)
    with torch.no_grad():
        logits = model(pad_series(series))
        assert logits.shape == (6, K)
        assert torch.isfinite(logits).all()
        # A sample's logits do not depend on the batch around it (padding, other samples).
        for k in (0, 3):
            alone = model(pad_series([series[k]]))
            torch.testing.assert_close(alone[0], logits[k], atol=1e-5, rtol=1e-5)
        reordered = model(pad_series(series[::-1]))
        torch.testing.assert_close(reordered.flip(0), logits, atol=1e-5, rtol=1e-5)


@pytest.mark.filterwarnings("ignore::dreamode.StiffStepWarning")
def test_times_matter_where_they_should():
    series = make_series(4, nan_rate=0.0)
    stretched = [IrregularSeries(s.times * 3, s.values, s.label) for s in series]
    models = all_models()
    with torch.no_grad():
        for name in ("dream-euler", "gru-dt", "gru-d"):
            m = models[name].eval()
            assert not torch.allclose(m(pad_series(series)), m(pad_series(stretched))), name
        lstm = models["lstm-ffill"].eval()
        torch.testing.assert_close(lstm(pad_series(series)), lstm(pad_series(stretched)))


def test_helpers_by_hand():
    x = torch.tensor([[[1.0], [0.0], [3.0], [0.0]], [[0.0], [2.0], [0.0], [0.0]]])
    mask = torch.tensor([[[1.0], [0.0], [1.0], [0.0]], [[0.0], [1.0], [0.0], [0.0]]])
    assert forward_fill(x, mask).squeeze(-1).tolist() == [[1.0, 1.0, 3.0, 3.0], [0.0, 2.0, 2.0, 2.0]]
    times = torch.tensor([[0.0, 0.5, 0.7, 1.0], [1.0, 2.0, 3.0, 4.0]], dtype=torch.float64)
    lengths = torch.tensor([4, 2])
    torch.testing.assert_close(
        time_deltas(times, lengths), torch.tensor([[0.0, 0.5, 0.2, 0.3], [0.0, 1.0, 0.0, 0.0]], dtype=torch.float64)
    )
    out = torch.arange(8.0).view(2, 4, 1)
    assert last_valid(out, lengths).squeeze(-1).tolist() == [3.0, 5.0]


def test_make_baseline_and_errors():
    assert isinstance(make_baseline("gru-d", I, K, 4), GRUD)
    with pytest.raises(ValueError, match="gru-d"):
        make_baseline("gru", I, K)
    with pytest.raises(TypeError, match="IrregularBatch"):
        GRUDelta(I, K, 4)(torch.zeros(2, 3, I))
    with pytest.raises(ValueError, match="num_classes"):
        SequenceClassifier(I, 0)
    with pytest.raises(ValueError, match="x_mean"):
        GRUD(I, K, 4, x_mean=torch.zeros(I + 1))
    loader = DataLoader(SeriesDataset(make_series(4)), batch_size=4, collate_fn=collate_series)
    with pytest.raises(ValueError, match="keep_best"):
        train_classifier(GRUDelta(I, K, 4), loader, epochs=1, keep_best=True)


def test_accuracy_counts_nonfinite_as_wrong():
    logits = torch.tensor([[2.0, 0.0], [math.nan, 1.0], [0.0, 1.0]])
    assert accuracy_from_logits(logits, torch.tensor([0, 1, 0])) == pytest.approx(1 / 3)


@pytest.mark.parametrize("name", ["dream-euler", "gru-d"])
def test_tiny_training_learns_and_val_acc_is_held_out_accuracy(name):
    """Nine training series; ``val_acc`` is measured on 30 other series. The classes differ by 1 in
    every channel's mean with noise 0.5, so even ten steps generalise: at least 18 of 30 right,
    which guessing (1/3) reaches with probability 0.25 %."""
    train = DataLoader(SeriesDataset(make_series(9, seed=1)), batch_size=9, shuffle=True, collate_fn=collate_series)
    held_out = DataLoader(SeriesDataset(make_series(30, seed=11)), batch_size=10, collate_fn=collate_series)
    model = all_models()[name]
    history = train_classifier(model, train, held_out, epochs=10, lr=5e-2, seed=0)
    assert len(history["loss"]) == len(history["val_acc"]) == 10
    assert history["loss"][-1] < 0.7 * history["loss"][0]
    assert history["nonfinite_batches"] == 0
    assert history["wall_time"] > 0
    # the last val_acc is the final model's accuracy on the held-out series, counted here
    model.eval()
    with torch.no_grad():
        hits = sum(int((model(b).argmax(dim=1) == b.labels).sum()) for b in held_out)
    assert history["val_acc"][-1] == pytest.approx(hits / 30, abs=1e-6)
    assert hits >= 18


def test_training_is_deterministic_given_a_seed():
    series = make_series(12, seed=2)

    def once():
        torch.manual_seed(5)
        model = GRUDelta(I, K, 6)
        loader = DataLoader(SeriesDataset(series), batch_size=4, shuffle=True, collate_fn=collate_series)
        return train_classifier(model, loader, epochs=3, seed=3)["loss"], model.head.weight.detach().clone()

    (loss_a, w_a), (loss_b, w_b) = once(), once()
    assert loss_a == loss_b
    assert torch.equal(w_a, w_b)


class _Broken(nn.Module):
    """Logits ``w`` for every sample, NaN for a batch whose first label is 0."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(K))

    def forward(self, batch):
        logits = self.w.expand(batch.x.shape[0], K)
        return logits * math.nan if int(batch.labels[0]) == 0 else logits


def test_nonfinite_batches_are_skipped_and_counted():
    """Of two batches a NaN one is counted and changes nothing: training equals training on the
    finite batch alone. (An epoch with no finite batch raises TrainingDivergedError:
    tests/test_fit_reliability.py.)"""
    series = make_series(8)  # labels 0,1,2,0 | 1,2,0,1: the first batch is NaN
    model, alone = _Broken(), _Broken()
    loader = DataLoader(SeriesDataset(series), batch_size=4, collate_fn=collate_series)
    history = train_classifier(model, loader, epochs=2)
    only_finite = DataLoader(SeriesDataset(series[4:]), batch_size=4, collate_fn=collate_series)
    reference = train_classifier(alone, only_finite, epochs=2)
    assert history["nonfinite_batches"] == 2 and reference["nonfinite_batches"] == 0
    assert not torch.equal(model.w.detach(), torch.ones(K))  # the finite batch trained
    assert torch.equal(model.w.detach(), alone.w.detach())
    assert history["loss"] == reference["loss"]
    # accuracy counts the NaN rows as wrong: at most the finite half can be right
    assert evaluate(alone, only_finite) > 0
    assert evaluate(model, loader) == pytest.approx(evaluate(alone, only_finite) / 2)


def test_a_dream_solve_that_blows_up_is_skipped_and_counted():
    """DREAM raises SolverError on a non-finite solution; training skips that batch, as it does a NaN loss."""
    torch.manual_seed(0)
    model = SequenceClassifier(I, K, hidden_dim=4, rank=2)
    huge = [IrregularSeries(s.times, s.values * 1e30, s.label) for s in make_series(4)]  # overflows float32
    loader = DataLoader(SeriesDataset(huge + make_series(4)), batch_size=4, collate_fn=collate_series)
    before = [p.detach().clone() for p in model.parameters()]
    history = train_classifier(model, loader, epochs=1)
    assert history["nonfinite_batches"] == 1
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))  # the good batch trained


def test_count_parameters():
    model = GRUDelta(I, K, 4)
    assert count_parameters(model) == 3 * ((2 * I + 1) * 4 + 4 * 4 + 2 * 4) + 4 * K + K
