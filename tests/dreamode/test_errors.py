"""Bad input gets a clear error naming the argument (messages pinned with match=)."""

from __future__ import annotations

import math

import pytest
import torch

from dreamode import DREAM, DREAMCell, DREAMConfig, DREAMState

I, H, R = 4, 6, 2
B, T = 3, 10
F64 = torch.float64

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return DREAM(I, H, R, dtype=F64)


@pytest.fixture(scope="module")
def x():
    return torch.randn(B, T, I, dtype=F64, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def times():
    return torch.cumsum(torch.full((B, T), 0.1, dtype=F64), dim=1)


# -- x -----------------------------------------------------------------------------------------


def test_x_of_wrong_rank(model):
    with pytest.raises(ValueError, match=r"DREAM: expected x of 2 \(unbatched\) or 3 dimensions, got 4"):
        model(torch.zeros(2, B, T, I, dtype=F64))
    with pytest.raises(ValueError, match=r"expected x of 2 \(unbatched\) or 3 dimensions, got 1"):
        model(torch.zeros(I, dtype=F64))


def test_x_of_wrong_feature_size(model):
    with pytest.raises(ValueError, match=r"expected x with input_dim=4 features \(last axis\), got 5"):
        model(torch.zeros(B, T, I + 1, dtype=F64))


def test_x_not_a_tensor(model):
    with pytest.raises(TypeError, match=r"x must be a torch.Tensor, got list"):
        model([[0.0] * I])


def test_x_with_no_steps(model):
    with pytest.raises(ValueError, match=r"x has no time steps"):
        model(torch.zeros(B, 0, I, dtype=F64))


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_x_with_nan_or_inf(model, x, bad):
    x = x.clone()
    x[1, 4, 2] = bad
    with pytest.raises(ValueError, match=r"x contains NaN or inf \(first at index \(1, 4, 2\)\).*mask="):
        model(x)


def test_finite_check_is_exact_when_the_sum_overflows():
    """The finiteness check sums first; finite values whose sum overflows still pass, and an
    infinity among them is still found."""
    from dreamode._checks import check_finite

    big = torch.full((4, 3), 3e38, dtype=torch.float32)  # finite; the float32 sum is inf
    check_finite("DREAM", "x", big)
    big[2, 1] = math.inf
    with pytest.raises(ValueError, match=r"x contains NaN or inf \(first at index \(2, 1\)\)"):
        check_finite("DREAM", "x", big)
    mixed = torch.tensor([3e38, 3e38, -3e38, -3e38, -3e38, 3e38], dtype=torch.float32)  # partial sums ±inf
    check_finite("DREAM", "x", mixed)


# -- times and dt ----------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_times_with_nan_or_inf(model, x, times, bad):
    times = times.clone()
    times[2, 5] = bad
    with pytest.raises(ValueError, match=r"times contains NaN or inf \(first at index \(2, 5\)\)"):
        model(x, times=times)


def test_non_increasing_times_name_sample_and_index(model, x, times):
    t = times.clone()
    t[1, 4] = t[1, 3]  # repeated time
    with pytest.raises(ValueError, match=r"times must be strictly increasing.*sample 1: times\[1, 3\]=.*times\[1, 4\]"):
        model(x, times=t)
    t = times.clone()
    t[2, 7] = t[2, 2]  # going back
    with pytest.raises(ValueError, match=r"sample 2: times\[2, 6\]=.*times\[2, 7\]=0\.3"):
        model(x, times=t)
    with pytest.raises(ValueError, match=r"times\[0, 1\]"):
        model(x, times=times[0].flip(0))  # shared (T,) times, decreasing


def test_t0_not_before_first_time(model, x, times):
    with pytest.raises(ValueError, match=r"strictly increasing .*after t0.*sample 0: t0=.*times\[0, 0\]"):
        model(x, times=times, t0=times[:, 0])
    with pytest.raises(ValueError, match=r"expected t0 as a scalar or of shape \(3,\)"):
        model(x, times=times, t0=torch.zeros(2, dtype=F64))


def test_t0_without_times(model, x):
    with pytest.raises(ValueError, match=r"t0 applies only together with times"):
        model(x, t0=0.0)


@pytest.mark.parametrize("bad", [0.0, -0.1])
def test_non_positive_dt(model, x, bad):
    dt = torch.full((B, T), 0.1, dtype=F64)
    dt[2, 6] = bad
    with pytest.raises(ValueError, match=r"dt must be positive; dt\[2, 6\]="):
        model(x, dt=dt)
    with pytest.raises(ValueError, match=r"dt must be positive; dt\[0, 3\]"):
        model(x, dt=torch.tensor([0.1, 0.1, 0.1, bad, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1], dtype=F64))


def test_dt_with_nan(model, x):
    dt = torch.full((B, T), 0.1, dtype=F64)
    dt[0, 0] = math.nan
    with pytest.raises(ValueError, match=r"dt contains NaN or inf"):
        model(x, dt=dt)


def test_times_and_dt_both(model, x, times):
    with pytest.raises(ValueError, match=r"give times or dt, not both"):
        model(x, times=times, dt=torch.full((B, T), 0.1, dtype=F64))


@pytest.mark.parametrize("name", ["times", "dt"])
def test_times_or_dt_of_wrong_shape(model, x, name):
    with pytest.raises(ValueError, match=rf"expected {name} of shape \(B, T\) or \(T,\) with B=3, T=10, got \(3, 9\)"):
        model(x, **{name: torch.full((B, T - 1), 0.1, dtype=F64)})


# -- mask ------------------------------------------------------------------------------------


def test_mask_of_wrong_shape(model, x):
    with pytest.raises(ValueError, match=r"expected mask of the shape of x \(3, 10, 4\), got \(3, 10, 3\)"):
        model(x, mask=torch.ones(B, T, I - 1, dtype=F64))


def test_mask_with_values_other_than_0_1(model, x):
    mask = torch.ones(B, T, I, dtype=F64)
    mask[0, 0, 0] = 0.5
    with pytest.raises(ValueError, match=r"mask must hold 0/1 \(or bool\) values"):
        model(x, mask=mask)


def test_bool_mask_is_accepted(model, x):
    mask = torch.rand(B, T, I, generator=torch.Generator().manual_seed(0)) > 0.5
    out_b, _ = model(x, mask=mask)
    out_f, _ = model(x, mask=mask.to(F64))
    assert torch.equal(out_b, out_f)


# -- lengths ---------------------------------------------------------------------------------


def test_lengths_of_wrong_shape(model, x):
    with pytest.raises(ValueError, match=r"expected lengths of shape \(3,\), got \(2,\)"):
        model(x, lengths=torch.tensor([10, 10]))


@pytest.mark.parametrize("bad", [0, T + 1])
def test_lengths_out_of_range(model, x, bad):
    with pytest.raises(ValueError, match=r"lengths must be in \[1, 10\] \(the sequence length\)"):
        model(x, lengths=torch.tensor([10, bad, 4]))


def test_lengths_of_float_dtype(model, x):
    with pytest.raises(TypeError, match=r"lengths must hold integers, got dtype torch.float32"):
        model(x, lengths=torch.tensor([10.0, 5.0, 4.0]))


def test_lengths_with_unbatched_input(model, x):
    with pytest.raises(ValueError, match=r"lengths applies to batched input"):
        model(x[0], lengths=torch.tensor([5]))


# -- state -----------------------------------------------------------------------------------


def test_state_from_another_batch_size(model, x):
    _, state = model(x[:2])
    with pytest.raises(ValueError, match=r"state.h has shape \(2, 6\), expected \(3, 6\).*another batch size"):
        model(x, state)


def test_state_from_another_config(model, x):
    torch.manual_seed(0)
    wider = DREAM(I, H + 1, R, dtype=F64)
    _, state = wider(x)
    with pytest.raises(ValueError, match=r"state.h has shape \(3, 7\), expected \(3, 6\).*configuration"):
        model(x, state)
    other_rank = DREAM(I, H, R + 1, dtype=F64)
    _, state = other_rank(x)
    with pytest.raises(ValueError, match=r"state.U has shape \(3, 6, 3\), expected \(3, 6, 2\)"):
        model(x, state)


def test_state_of_wrong_type_or_layer_count(model, x):
    with pytest.raises(TypeError, match=r"state must be a DREAMState, got Tensor"):
        model(x, torch.zeros(B, H, dtype=F64))
    two = DREAM(I, H, R, num_layers=2, dtype=F64)
    _, states = two(x)
    with pytest.raises(ValueError, match=r"expected a state for each of the 2 layers, got 1"):
        two(x, states[:1])
    with pytest.raises(TypeError, match=r"state must be a list of 2 DREAMStates"):
        two(x, states[0])


def test_state_of_another_dtype(model, x):
    _, state = model(x)
    with pytest.raises(TypeError, match=r"state.h has dtype torch.float32, but the model has dtype torch.float64"):
        model(x, state.to(torch.float32))


def test_x_dtype_mismatch(x):
    model32 = DREAM(I, H, R)
    with pytest.raises(TypeError, match=r"x has dtype torch.float64, but the model has dtype torch.float32.*model.to"):
        model32(x)


# -- constructor -----------------------------------------------------------------------------


def test_unknown_solver_suggests_the_closest():
    with pytest.raises(ValueError, match=r"unknown solver 'rk5'; did you mean 'rk4'\?.*euler"):
        DREAM(I, H, R, solver="rk5")
    with pytest.raises(ValueError, match=r"unknown solver 'ltc_fused'; did you mean 'ltc-fused'\?"):
        DREAM(I, H, R, solver="ltc_fused")


def test_unknown_interpolation():
    with pytest.raises(ValueError, match=r"unknown interpolation 'cubik'; did you mean 'cubic'\?.*hold"):
        DREAM(I, H, R, interpolation="cubik")


def test_adjoint_with_a_fixed_step_solver():
    with pytest.raises(ValueError, match=r"adjoint=True needs a solver with an adjoint \(.*dopri5.*\), got 'euler'"):
        DREAM(I, H, R, solver="euler", adjoint=True)
    with pytest.raises(ValueError, match=r"adjoint=True needs .*got 'ltc-fused'"):
        DREAM(I, H, R, solver="ltc-fused", adjoint=True)


def test_max_step_with_an_adaptive_solver():
    with pytest.raises(ValueError, match=r"max_step applies to fixed-step solvers; 'dopri5' is adaptive"):
        DREAM(I, H, R, solver="dopri5", max_step=0.01)
    with pytest.raises(ValueError, match=r"max_step must be a positive number, got -1"):
        DREAM(I, H, R, solver="rk4", max_step=-1)


def test_unknown_config_keyword():
    with pytest.raises(TypeError, match=r"unexpected keyword argument\(s\) \['forgeting_rate'\].*forgetting_rate"):
        DREAM(I, H, R, forgeting_rate=0.1)


def test_bad_dropout_and_num_layers():
    with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\), got 1.5"):
        DREAM(I, H, R, dropout=1.5)
    with pytest.raises(ValueError, match=r"num_layers must be a positive int, got 0"):
        DREAM(I, H, R, num_layers=0)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(forgetting_rate=-0.1), r"forgetting_rate must be >= 0, got -0.1"),
        (dict(homeostasis_rate=-1.0), r"homeostasis_rate must be >= 0"),
        (dict(time_step=0.0), r"time_step must be > 0"),
        (dict(error_smoothing=1.5), r"error_smoothing must be in \[0, 1\]"),
        (dict(rank=9), r"rank must be <= input_dim.*rank=9, input_dim=4"),
        (dict(rank=0), r"rank must be a positive int"),
        (dict(tau_min=2.0, tau_max=1.0), r"tau_min \(2.0\) must be <= tau_max \(1.0\)"),
        (dict(surprise_temperature=math.nan), r"surprise_temperature must be a finite number"),
        (dict(ltc_enabled=1), r"ltc_enabled must be a bool"),
    ],
)
def test_config_errors_name_the_field(kwargs, match):
    fields = dict(input_dim=I, hidden_dim=H, rank=R)
    fields.update(kwargs)
    with pytest.raises(ValueError, match=match):
        DREAMConfig(**fields)
    # The modules validate through the same config.
    extra = {k: v for k, v in kwargs.items() if k != "rank"}
    with pytest.raises(ValueError, match=match):
        DREAM(I, H, kwargs.get("rank", R), **extra)


# -- DREAMCell -------------------------------------------------------------------------------


def test_cell_errors():
    torch.manual_seed(0)
    cell = DREAMCell(I, H, R, dtype=F64)
    xt = torch.zeros(B, I, dtype=F64)
    with pytest.raises(ValueError, match=r"DREAMCell: expected x of 1 \(unbatched\) or 2 dimensions, got 3"):
        cell(torch.zeros(B, T, I, dtype=F64))
    with pytest.raises(ValueError, match=r"DREAMCell: expected x with input_dim=4 features, got 3"):
        cell(torch.zeros(B, I - 1, dtype=F64))
    with pytest.raises(ValueError, match=r"DREAMCell: x contains NaN or inf"):
        cell(torch.full((B, I), math.nan, dtype=F64))
    for bad in (0.0, -1.0, math.inf):
        with pytest.raises(ValueError, match=r"DREAMCell: dt must be a positive finite number"):
            cell(xt, dt=bad)
    with pytest.raises(ValueError, match=r"DREAMCell: dt must be positive"):
        cell(xt, dt=torch.tensor([0.1, 0.0, 0.1], dtype=F64))
    with pytest.raises(ValueError, match=r"DREAMCell: expected dt as a scalar or of shape \(3,\)"):
        cell(xt, dt=torch.full((2,), 0.1, dtype=F64))
    with pytest.raises(ValueError, match=r"DREAMCell: expected mask of the shape of x"):
        cell(xt, mask=torch.ones(B, I + 1, dtype=F64))
    with pytest.raises(ValueError, match=r"DREAMCell: mask must hold 0/1"):
        cell(xt, mask=torch.full((B, I), 0.5, dtype=F64))
    _, z = cell(xt[:2])
    with pytest.raises(ValueError, match=r"DREAMCell: state.h has shape \(2, 6\), expected \(3, 6\)"):
        cell(xt, z)
    with pytest.raises(TypeError, match=r"DREAMCell: x has dtype torch.float32"):
        cell(xt.float())
    with pytest.raises(TypeError, match=r"give a DREAMConfig, or input_dim and hidden_dim"):
        DREAMCell(I)


def test_state_from_dict_with_missing_key():
    d = DREAMState.initial(2, I, H, R).as_dict()
    del d["U_target"]
    with pytest.raises(ValueError, match=r"missing keys \['U_target'\]"):
        DREAMState.from_dict(d)


# -- devices ---------------------------------------------------------------------------------


@cuda
def test_x_on_another_device(model, x):
    with pytest.raises(ValueError, match=r"x is on cuda:0, but the model is on cpu"):
        model(x.cuda())


@cuda
def test_times_dt_mask_on_another_device(model, x, times):
    with pytest.raises(ValueError, match=r"times is on cuda:0, but x is on cpu"):
        model(x, times=times.cuda())
    with pytest.raises(ValueError, match=r"dt is on cuda:0, but x is on cpu"):
        model(x, dt=torch.full((B, T), 0.1, dtype=F64, device="cuda"))
    with pytest.raises(ValueError, match=r"mask is on cuda:0, but x is on cpu"):
        model(x, mask=torch.ones(B, T, I, dtype=F64, device="cuda"))


@cuda
def test_state_on_another_device(model, x):
    _, state = model(x)
    with pytest.raises(ValueError, match=r"state.h is on cuda:0, but the model is on cpu"):
        model(x, state.to("cuda"))


# -- reliability: float32 times, integer x, a huge state ---------------------------------------

UNIX = 1.7e9  # seconds since 1970, late 2023


def _unix_times(gap: float, n: int = 6) -> torch.Tensor:
    return (UNIX + gap * torch.arange(n, dtype=F64)).unsqueeze(0)


def test_float32_unix_times_refused_not_silently_rounded():
    x = torch.randn(1, 6, I, dtype=F64, generator=torch.Generator().manual_seed(2))
    torch.manual_seed(0)
    model = DREAM(I, H, R, dtype=F64, solver="ltc-fused")
    t32 = _unix_times(200.0).float()
    # the damage the check is for: float32's spacing at 1.7e9 is 128 s, so 200 s gaps do not survive
    assert set(t32.double().diff().flatten().tolist()) == {128.0, 256.0}
    with pytest.raises(
        ValueError, match=r"times is torch.float32, too coarse .* spacing at \|times\| = 1\.7e\+09 is 128"
    ):
        model(x, times=t32)
    # the remedies the message names both work and agree with the exact float64 times
    out64, _ = model(x, times=_unix_times(200.0))
    shifted = (_unix_times(200.0) - UNIX).float()
    out_shifted, _ = model(x, times=shifted, t0=-0.1)
    assert torch.allclose(out_shifted, out64, rtol=0, atol=1e-12)


def test_float32_times_that_collapse_blame_the_precision(model):
    x = torch.randn(1, 6, I, dtype=F64)
    t32 = _unix_times(0.1).float()
    assert bool((t32.diff() == 0).all())  # six distinct times became one value
    with pytest.raises(
        ValueError, match=r"strictly increasing.*\(times is torch.float32, whose spacing at 1\.7e\+09 is 128"
    ):
        model(x, times=t32)


def test_float32_times_of_ordinary_size_still_accepted(model, x):
    times = torch.cumsum(torch.full((B, T), 0.1), dim=1)  # float32, up to 1.0: rounding ~1e-7 of a gap
    out, _ = model(x, times=times)
    out64, _ = model(x, times=times.double())
    assert torch.equal(out, out64)


def test_float32_series_times_refused_by_the_data_tools():
    from dreamode.data import pad_series

    times = _unix_times(200.0)[0]
    with pytest.raises(ValueError, match=r"pad_series: series\[0\] times is torch.float32, too coarse"):
        pad_series([(times.float(), torch.zeros(6, 1), 0)])
    with pytest.raises(ValueError, match=r"series\[0\] times is torch.float32, too coarse"):
        pad_series([(times.numpy().astype("float32"), torch.zeros(6, 1), 0)])
    with pytest.raises(ValueError, match=r"strictly increasing.*spacing at 1\.7e\+09 is 128"):
        pad_series([(_unix_times(0.1)[0].float(), torch.zeros(6, 1), 0)])
    assert pad_series([(times, torch.zeros(6, 1), 0)]).times[0].diff().eq(200.0).all()


def test_integer_x_asks_to_convert_x_not_the_model(model):
    with pytest.raises(
        TypeError, match=r"x has dtype torch.int64.*convert x to a floating dtype: x.to\(torch.float64\)"
    ) as info:
        model(torch.ones(B, T, I, dtype=torch.int64))
    assert "model.to" not in str(info.value)
    with pytest.raises(TypeError, match=r"x.to\(torch.float32\) \(or x.float\(\)\)"):
        DREAM(I, H, R)(torch.ones(B, T, I, dtype=torch.int32))


@pytest.mark.parametrize("num_layers", [1, 2])
def test_huge_state_is_blamed_not_the_inputs(num_layers):
    from solvers import SolverError

    torch.manual_seed(0)
    model = DREAM(I, H, R, num_layers=num_layers)  # float32: squares overflow beyond 1.8e19
    x = torch.randn(B, T, I)
    _, state = model(x)
    label = "state" if num_layers == 1 else r"state\[0\]"
    if num_layers == 1:
        state = state._replace(h=torch.full_like(state.h, 1e30))
    else:
        state[0] = state[0]._replace(h=torch.full_like(state[0].h, 1e30))
    with pytest.raises(SolverError, match=rf"Likely cause: the state passed in: {label}\.h \(up to 1e\+30\)"):
        model(x, state)
