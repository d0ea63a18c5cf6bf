"""`dreamode.compare` end to end on a tiny configuration."""

import json

import pytest

from dreamode.compare import CompareSettings, run_compare


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("compare")
    settings = CompareSettings(
        methods=("euler", "rk4", "dopri5", "ltc-fused"),
        hidden_dim=8,
        rank=2,
        epochs=1,
        max_series=12,
        substeps=(2, 4, 8),
    )
    return out, run_compare(settings, out, log=lambda m: None)


def test_writes_json_markdown_plots_and_checkpoint(report):
    out, rep = report
    for name in ("compare.json", "compare.md", "error_vs_step.png", "traces.png", "accuracy_vs_cost.png", "model.pt"):
        assert (out / name).stat().st_size > 0, name
    saved = json.loads((out / "compare.json").read_text())
    assert [m["name"] for m in saved["methods"]] == ["euler", "rk4", "dopri5", "ltc-fused"]
    keys = {"max_dev_ref", "mean_dev_ref", "max_dev_euler", "accuracy", "nfe", "steps", "wall_s", "parted_fraction"}
    assert keys <= set(saved["methods"][0])
    assert set(saved["sweep"]) == {"euler", "midpoint", "heun", "rk4"}


def test_numbers_are_what_the_methods_should_give(report):
    _, rep = report
    m = {r["name"]: r for r in rep["methods"]}
    assert m["euler"]["max_dev_euler"] == 0.0
    # higher order is closer to the tight reference than the Euler rule
    assert m["rk4"]["max_dev_ref"] < 0.1 * m["euler"]["max_dev_ref"]
    assert m["dopri5"]["max_dev_ref"] < m["rk4"]["max_dev_ref"]
    # exact NFE of the fixed-step rows: one (euler) or four (rk4) evaluations per observation step
    assert m["rk4"]["nfe"] == 4 * m["euler"]["nfe"]
    orders = {k: v["order"] for k, v in rep["sweep"].items()}
    assert abs(orders["euler"] - 1) < 0.3 and abs(orders["rk4"] - 4) < 0.6, orders


def test_unknown_method_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="unknown method.*'rk5'"):
        run_compare(CompareSettings(methods=("rk5",)), tmp_path)
