"""`dreamode.checkpoint`: model + config + optimizer + state round trips with weights_only=True;
another config, a truncated file, a foreign file and a pickle that would run code are refused."""

import pickle

import pytest
import torch

from dreamode import DREAM
from dreamode.checkpoint import CheckpointError, load_checkpoint, model_config, save_checkpoint


def _model(**kw):
    torch.manual_seed(0)
    return DREAM(3, 8, rank=2, dtype=torch.float64, **kw)


def _train_steps(model, opt, x, state, n):
    for _ in range(n):
        out, state = model(x, state)
        opt.zero_grad()
        out.pow(2).mean().backward()
        opt.step()
        state = state.detach()
    return state


def test_round_trip_continues_exactly(tmp_path):
    x = torch.randn(4, 10, 3, dtype=torch.float64)
    model = _model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    state = _train_steps(model, opt, x, None, 2)
    save_checkpoint(tmp_path / "c.pt", model, optimizer=opt, state=state, extra={"step": 2})

    # continue the original ...
    state_a = _train_steps(model, opt, x, state, 3)
    # ... and a fresh model restored from the file
    restored = _model()
    restored.reset_parameters()
    opt_b = torch.optim.Adam(restored.parameters(), lr=1e-2)
    ckpt = load_checkpoint(tmp_path / "c.pt", restored, optimizer=opt_b)
    assert ckpt.extra == {"step": 2} and ckpt.config == model_config(model)
    state_b = _train_steps(restored, opt_b, x, ckpt.state, 3)
    for a, b in zip(model.parameters(), restored.parameters()):
        assert torch.equal(a, b)
    for a, b in zip(state_a, state_b):
        assert torch.equal(a, b)


def test_state_of_several_layers_round_trips(tmp_path):
    model = _model(num_layers=2)
    _, state = model(torch.randn(2, 5, 3, dtype=torch.float64))
    save_checkpoint(tmp_path / "c.pt", model, state=state)
    got = load_checkpoint(tmp_path / "c.pt", _model(num_layers=2)).state
    assert isinstance(got, list) and len(got) == 2
    assert all(torch.equal(a, b) for s, t in zip(state, got) for a, b in zip(s, t))


def test_other_config_is_refused_naming_the_difference(tmp_path):
    save_checkpoint(tmp_path / "c.pt", _model())
    with pytest.raises(CheckpointError, match=r"hidden_dim: saved 8, expected 16"):
        load_checkpoint(tmp_path / "c.pt", DREAM(3, 16, rank=2))
    with pytest.raises(CheckpointError, match=r"solver: saved 'euler', expected 'rk4'"):
        load_checkpoint(tmp_path / "c.pt", _model(solver="rk4"))
    with pytest.raises(CheckpointError, match=r"kappa: saved 0.5, expected 0.7"):
        load_checkpoint(tmp_path / "c.pt", _model(kappa=0.7))


def test_weights_that_do_not_fit_are_refused(tmp_path):
    save_checkpoint(tmp_path / "c.pt", _model(), config={})  # no config to compare: the shapes decide
    with pytest.raises(CheckpointError, match="do not fit"):
        load_checkpoint(tmp_path / "c.pt", DREAM(3, 16, rank=2), config={})


def test_missing_optimizer_state_is_an_error(tmp_path):
    model = _model()
    save_checkpoint(tmp_path / "c.pt", model)
    with pytest.raises(CheckpointError, match="no optimizer state"):
        load_checkpoint(tmp_path / "c.pt", model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1))


@pytest.mark.parametrize("keep", [0.1, 0.5, 0.9])
def test_truncated_file_is_a_clear_error(tmp_path, keep):
    save_checkpoint(tmp_path / "c.pt", _model())
    data = (tmp_path / "c.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(CheckpointError, match=r"cannot be read \(truncated or corrupt file\?\)"):
        load_checkpoint(tmp_path / "cut.pt", _model())


def test_missing_and_foreign_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_checkpoint(tmp_path / "nope.pt")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not a dreamode checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")


def test_a_pickle_that_runs_code_is_refused_without_running_it(tmp_path):
    target = tmp_path / "never"

    class Exploit:
        def __reduce__(self):
            return (open, (str(target), "w"))

    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"format": "dreamode-checkpoint", "model": Exploit()}, f, protocol=2)
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_checkpoint(path)
    assert not target.exists()


def test_interrupted_save_leaves_the_old_file(tmp_path, monkeypatch):
    model = _model()
    save_checkpoint(tmp_path / "c.pt", model, extra={"v": 1})

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr("dreamode.checkpoint.os.replace", boom)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path / "c.pt", model, extra={"v": 2})
    assert load_checkpoint(tmp_path / "c.pt", model).extra == {"v": 1}
