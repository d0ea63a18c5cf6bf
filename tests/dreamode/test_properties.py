"""Property-based tests (hypothesis) over random shapes, times, masks, lengths, dtypes and solvers.

Every drawn case is valid input: per-sample strictly increasing times (or positive ``dt``) with
gaps below the explicit stability limit, 0/1 masks, lengths in ``[1, T]``. The properties:

* no crash, finite outputs and states of the right shapes and dtype, zeros past ``lengths``;
* per-sample independence: each row run alone equals its row of the batch;
* chunked streaming (state and ``t0`` carried over a random split) equals one pass;
* a state saved with ``torch.save(state.as_dict())`` and loaded with ``weights_only=True`` continues
  bit-identically.

"Equal" is ``max|a − b| / max(1, max|b|)`` per tensor: ≤ 1e-12 in float64, ≤ 1e-5 in float32 for
the fixed-step solvers (the batched and the single-row matrix products round differently); the
adaptive solver's step control looks at the whole batch, so rows alone agree to its tolerance.
``derandomize=True``: CI draws the same cases every run.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dreamode import DREAM, DREAMState

F32, F64 = torch.float32, torch.float64
FIXED = ["euler", "rk4", "ltc-fused", "midpoint"]
TOL = {F64: 1e-12, F32: 1e-5}


def _settings(n: int) -> settings:
    return settings(
        max_examples=n,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


@dataclass
class Case:
    B: int
    T: int
    I: int
    H: int
    R: int
    num_layers: int
    dtype: torch.dtype
    solver: str
    interpolation: str
    time_mode: str  # "default", "dt", "times" (per sample) or "shared" (one (T,) grid)
    masked: bool
    padded: bool
    scale: float
    seed: int

    def model(self, **kw) -> DREAM:
        torch.manual_seed(self.seed)
        tol = {} if self.solver in FIXED else dict(rtol=1e-6, atol=1e-8)
        return DREAM(
            self.I,
            self.H,
            self.R,
            num_layers=self.num_layers,
            solver=self.solver,
            interpolation=self.interpolation,
            dtype=self.dtype,
            **tol,
            **kw,
        )

    def inputs(self) -> dict:
        """``x`` and the keyword arguments of one forward, drawn from ``seed``."""
        g = torch.Generator().manual_seed(self.seed)
        B, T = self.B, self.T
        x = self.scale * torch.randn(B, T, self.I, generator=g, dtype=F64)
        gaps = 0.01 + 0.18 * torch.rand(B, T, generator=g, dtype=F64)  # stability limit: 0.2
        kw: dict = {"x": x.to(self.dtype)}
        if self.time_mode == "dt":
            kw["dt"] = gaps
        elif self.time_mode == "times":
            kw["times"] = 20 * torch.rand(B, 1, generator=g, dtype=F64) - 10 + gaps.cumsum(1)
        elif self.time_mode == "shared":
            kw["times"] = 3.0 + gaps[0].cumsum(0)
        if self.masked:
            kw["mask"] = (torch.rand(B, T, self.I, generator=g) < 0.7).to(self.dtype)
        if self.padded:
            kw["lengths"] = torch.randint(1, T + 1, (B,), generator=g)
        return kw


@st.composite
def cases(
    draw, solvers=tuple(FIXED), min_T=1, max_T=12, interpolations=("hold", "linear", "cubic"), padded=True
) -> Case:
    I = draw(st.integers(1, 5))
    H = draw(st.integers(1, 8))
    num_layers = draw(st.sampled_from([1, 1, 2]))
    R = draw(st.integers(1, min(I, H) if num_layers > 1 else I))
    return Case(
        B=draw(st.integers(1, 4)),
        T=draw(st.integers(min_T, max_T)),
        I=I,
        H=H,
        R=R,
        num_layers=num_layers,
        dtype=draw(st.sampled_from([F32, F64])),
        solver=draw(st.sampled_from(solvers)),
        interpolation=draw(st.sampled_from(interpolations)),
        time_mode=draw(st.sampled_from(["default", "dt", "times", "shared"])),
        masked=draw(st.booleans()),
        padded=draw(st.booleans()) if padded else False,
        scale=draw(st.sampled_from([0.1, 1.0, 5.0])),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


def _dev(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max()) / max(1.0, float(b.double().abs().max()))


def _layers(state) -> list[DREAMState]:
    return [state] if isinstance(state, DREAMState) else list(state)


def _rows(kw: dict, b: int, L: int) -> dict:
    """The keyword arguments of sample ``b`` alone, cut to its length ``L``."""
    out = {}
    for k, v in kw.items():
        if k == "lengths":
            continue
        if k == "times" and v.dim() == 1:
            out[k] = v[:L]
        else:
            out[k] = v[b : b + 1, :L]
    return out


def _cut(kw: dict, a: int, b: int) -> dict:
    """Steps ``a:b`` of every per-step argument (no lengths)."""
    return {k: (v[a:b] if v.dim() == 1 else v[:, a:b]) for k, v in kw.items()}


def _in_two_chunks(model, x: torch.Tensor, kw: dict, k: int, T: int):
    """Steps ``:k``, then ``k:`` continuing from the first chunk's state (with ``t0`` given times).

    Returns ``(first, s_mid, second, s_end, rest)``; ``rest`` holds the second chunk's arguments.
    """
    first, s_mid = model(x[:, :k], **_cut(kw, 0, k))
    rest = _cut(kw, k, T)
    if "times" in kw:
        t = kw["times"]
        rest["t0"] = float(t[k - 1]) if t.dim() == 1 else t[:, k - 1]
    second, s_end = model(x[:, k:], s_mid, **rest)
    return first, s_mid, second, s_end, rest


@_settings(25)
@given(case=cases())
def test_valid_input_runs_finite_and_each_sample_is_independent(case: Case):
    model = case.model()
    kw = case.inputs()
    x = kw.pop("x")
    with torch.no_grad():
        out, state = model(x, **kw)
    assert out.shape == (case.B, case.T, case.H) and out.dtype == case.dtype
    assert bool(torch.isfinite(out).all())
    for s in _layers(state):
        assert s.h.shape == (case.B, case.H) and s.U.shape == (case.B, case.H, case.R)
        assert all(c.dtype == case.dtype and bool(torch.isfinite(c).all()) for c in s)
    lengths = kw.get("lengths", torch.full((case.B,), case.T))
    for b in range(case.B):
        L = int(lengths[b])
        assert bool((out[b, L:] == 0).all())
        with torch.no_grad():
            alone, s_alone = model(x[b : b + 1, :L], **_rows(kw, b, L))
        assert _dev(out[b : b + 1, :L], alone) <= TOL[case.dtype], b
        for s, sa in zip(_layers(state), _layers(s_alone)):
            for name, c, ca in zip(DREAMState._fields, s.select(b), sa):
                assert _dev(c, ca) <= TOL[case.dtype], (b, name)


# Streaming: no lengths (a chunk carries every sample to its end), and the default "hold" input path:
# with "linear" and "cubic" a chunk's first step has no earlier observation and holds x_1, as at the
# start of a sequence, so a chunk boundary changes the path on that step (docs/reliability.md).
@_settings(25)
@given(case=cases(min_T=2, interpolations=("hold",), padded=False), split=st.floats(0.0, 1.0))
def test_chunked_streaming_and_a_saved_state_continue_one_pass(case: Case, split: float):
    model = case.model()
    kw = case.inputs()
    x = kw.pop("x")
    k = 1 + int(split * (case.T - 2) + 0.5)  # 1 <= k <= T - 1
    with torch.no_grad():
        full, s_full = model(x, **kw)
        first, s_mid, second, s_end, rest = _in_two_chunks(model, x, kw, k, case.T)

        buf = io.BytesIO()
        torch.save([s.as_dict() for s in _layers(s_mid)], buf)
        buf.seek(0)
        loaded = [DREAMState.from_dict(d) for d in torch.load(buf, weights_only=True)]
        again, s_again = model(x[:, k:], loaded[0] if case.num_layers == 1 else loaded, **rest)

    assert _dev(torch.cat([first, second], 1), full) <= TOL[case.dtype]
    for s, sf in zip(_layers(s_end), _layers(s_full)):
        for name, c, cf in zip(DREAMState._fields, s, sf):
            assert _dev(c, cf) <= TOL[case.dtype], name
    # the round trip through a file changes nothing, bit for bit
    assert torch.equal(again, second)
    for s, sa in zip(_layers(s_end), _layers(s_again)):
        assert all(torch.equal(c, ca) for c, ca in zip(s, sa))


@_settings(3)
@given(case=cases(solvers=("dopri5",), min_T=2, max_T=6, interpolations=("hold",), padded=False))
def test_adaptive_solver_properties(case: Case):
    """dopri5 (rtol 1e-6, atol 1e-8): finite, rows alone agree to ~the tolerance, chunks equal one pass."""
    model = case.model()
    kw = case.inputs()
    x = kw.pop("x")
    k = case.T // 2
    with torch.no_grad():
        out, state = model(x, **kw)
        assert bool(torch.isfinite(out).all())
        for b in range(case.B):
            alone, _ = model(x[b : b + 1], **_rows(kw, b, case.T))
            assert _dev(out[b : b + 1], alone) <= 1e-4, b
        first, _, second, _, _ = _in_two_chunks(model, x, kw, k, case.T)
    # each observation interval is its own solve over the same batch: chunking changes nothing
    assert _dev(torch.cat([first, second], 1), out) <= TOL[case.dtype]


def test_the_strategy_reaches_every_option():
    """A guard on the strategy itself: the draws cover each solver, dtype, time mode and flag."""
    keys = ("solver", "dtype", "time_mode", "masked", "padded", "num_layers", "interpolation")
    seen: dict[str, set] = {k: set() for k in keys}

    @_settings(60)
    @given(case=cases())
    def collect(case: Case) -> None:
        for k in seen:
            seen[k].add(getattr(case, k))

    collect()
    assert seen["solver"] == set(FIXED)
    assert seen["dtype"] == {F32, F64}
    assert seen["time_mode"] == {"default", "dt", "times", "shared"}
    assert seen["masked"] == seen["padded"] == {False, True}
    assert seen["num_layers"] == {1, 2}
    assert seen["interpolation"] == {"hold", "linear", "cubic"}


if __name__ == "__main__":  # pragma: no cover
    pytest.main([__file__, "-q"])
