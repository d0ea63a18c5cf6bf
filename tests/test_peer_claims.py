"""The peer columns of the README's feature table, checked against the peers themselves where
they are installed (torchdiffeq always; ncps when present — 1.0.1 was checked)."""

import inspect

import pytest
import torch
import torchdiffeq

from dreamode import DREAM


def test_torchdiffeq_needs_one_time_grid_for_the_whole_batch():
    t = torch.tensor([[0.0, 1.0], [0.0, 2.0]])  # a grid per sample
    with pytest.raises(AssertionError, match="one dimensional"):
        torchdiffeq.odeint(lambda t, y: -y, torch.ones(2, 1), t)


def test_dreamode_takes_a_time_grid_per_sample():
    torch.manual_seed(0)
    model = DREAM(3, 8, rank=2, solver="rk4", dtype=torch.float64)
    x = torch.randn(2, 5, 3, dtype=torch.float64)
    times = torch.cumsum(0.05 + 0.1 * torch.rand(2, 5, dtype=torch.float64), dim=1)
    out, _ = model(x, times=times)
    alone, _ = model(x[1:], times=times[1:])
    assert torch.allclose(out[1:], alone, rtol=0, atol=1e-12)


def test_ncps_cfc_fails_on_per_sample_timespans():
    ncps = pytest.importorskip("ncps.torch")
    torch.manual_seed(0)
    model = ncps.CfC(3, 8, batch_first=True)
    with pytest.raises(RuntimeError, match="size of tensor"):
        model(torch.randn(2, 5, 3), timespans=torch.rand(2, 5))


def test_ncps_has_no_observation_mask_and_no_solver_choice():
    ncps = pytest.importorskip("ncps.torch")
    for cls in (ncps.CfC, ncps.LTC):
        params = set(inspect.signature(cls.forward).parameters)
        assert params == {"self", "input", "hx", "timespans"}
    assert "solver" not in inspect.signature(ncps.LTC.__init__).parameters


def test_ncps_cfc_samples_are_independent_of_their_batch():
    ncps = pytest.importorskip("ncps.torch")
    torch.manual_seed(0)
    model = ncps.CfC(3, 8, batch_first=True)
    x = torch.randn(4, 5, 3)
    out, _ = model(x)
    alone, _ = model(x[1:2])
    assert torch.allclose(out[1:2], alone, atol=1e-6)
