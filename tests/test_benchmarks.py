"""The benchmark scripts run (at a tiny size) and report consistent numbers."""

import pytest
from repo_scripts import load_script


def load(name: str):
    return load_script(f"benchmarks/{name}.py")


@pytest.mark.parametrize(
    "args", [[], ["--train"], ["--cell"], ["--solver", "rk4"], ["--solver", "rk4", "--train"]], ids=str
)
def test_op_floor_records_and_replays_the_fast_path(args, capsys):
    r = load("op_floor").main(["--steps", "3", "--repeats", "2", *args])
    out = capsys.readouterr().out
    assert "operations that compute" in out and "kernels" in out
    # the kernels are what is left of the Python-dispatched replay once the call cost is taken off
    assert 0 < r["lower"] < r["floor"]
    assert r["dream"] > 0 and r["lstm"] > 0
    assert (r["bare"] is not None) == ("--cell" in args)


def test_op_floor_recorder_sees_computing_operations_and_skips_views():
    import torch

    mod = load("op_floor")
    x = torch.randn(3, 4)
    with mod.Recorder() as rec:
        y = x.t().contiguous().tanh_()  # a view, a copy, an in-place op
    names = [f.overloadpacket.__name__ for f, _, _ in rec.calls]
    assert "tanh_" in names and "t" not in names and rec.views >= 1
    # the recorded input of the in-place op is its value before the call
    func, args, _ = next(c for c in rec.calls if c[0].overloadpacket.__name__ == "tanh_")
    torch.testing.assert_close(args[0], x.t().contiguous())
    torch.testing.assert_close(y, x.t().tanh())
