"""`dreamode.compare` end to end on a tiny configuration, in process."""

import json
import re

import pytest
import torch

from dreamode.compare import CompareSettings, markdown, read_checkpoint, run_compare, torch_threads

TINY = dict(hidden_dim=8, rank=2, epochs=1, max_series=12, substeps=(2, 4, 8), chunk=6)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("compare")
    settings = CompareSettings(methods=("euler", "rk4", "dopri5", "ltc-fused"), **TINY)
    lines = []
    return out, run_compare(settings, out, log=lines.append), lines


def test_writes_json_markdown_plots_and_checkpoint(report):
    out, rep, lines = report
    for name in ("compare.json", "compare.md", "error_vs_step.png", "traces.png", "accuracy_vs_cost.png", "model.pt"):
        assert (out / name).stat().st_size > 0, name
    saved = json.loads((out / "compare.json").read_text())
    assert [m["name"] for m in saved["methods"]] == ["euler", "rk4", "dopri5", "ltc-fused"]
    keys = {"max_dev_ref", "mean_dev_ref", "max_dev_euler", "accuracy", "agree_ref", "nfe", "steps", "wall_s"}
    assert keys <= set(saved["methods"][0])
    assert set(saved["sweep"]) == set(saved["smooth"]["sweep"]) == {"euler", "midpoint", "heun", "rk4"}
    assert saved["settings"]["threads"] == 1 and saved["test_series"] == 12
    assert any(line.startswith("[2/4] rk4") for line in lines)


def test_numbers_are_what_the_methods_should_give(report):
    _, rep, _ = report
    m = {r["name"]: r for r in rep["methods"]}
    assert m["euler"]["max_dev_euler"] == 0.0
    # higher order is closer to the tight reference than the Euler rule
    assert m["rk4"]["max_dev_ref"] < 0.1 * m["euler"]["max_dev_ref"]
    assert m["dopri5"]["max_dev_ref"] < m["rk4"]["max_dev_ref"]
    # exact NFE per batch of the fixed-step rows: one (euler) or four (rk4) evaluations per step
    assert m["rk4"]["nfe"] == 4 * m["euler"]["nfe"]
    assert all(0.0 <= r["agree_ref"] <= 1.0 for r in rep["methods"])
    for sweep in (rep["sweep"], rep["smooth"]["sweep"]):
        orders = {k: v["order"] for k, v in sweep.items()}
        assert abs(orders["euler"] - 1) < 0.3 and abs(orders["heun"] - 2) < 0.4, orders
    # the smooth variant (norm bound off) shows rk4's fourth order
    assert abs(rep["smooth"]["sweep"]["rk4"]["order"] - 4) < 0.6, rep["smooth"]


def test_summary_states_the_numbers_of_the_run(report):
    _, rep, _ = report
    e = next(r for r in rep["methods"] if r["name"] == "euler")
    first = rep["summary"][0]
    assert first.startswith("The Euler rule") and f"{e['max_dev_ref']:.2g}" in first
    assert ("unchanged" in first) == (e["agree_ref"] == 1.0)
    assert any(f"rk4 {rep['sweep']['rk4']['order']:.2f}" in p for p in rep["summary"])


def _tables(md):
    """Every markdown table of ``md`` as a list of rows of cells (``\\|`` is a literal bar)."""
    tables, cur = [], []
    for line in md.splitlines() + [""]:
        if line.startswith("|"):
            cells = re.split(r"(?<!\\)\|", line.strip())[1:-1]
            cur.append([c.strip() for c in cells])
        elif cur:
            tables.append(cur)
            cur = []
    return tables


def test_every_markdown_table_row_has_the_header_cell_count(report):
    out, rep, _ = report
    tables = _tables((out / "compare.md").read_text())
    assert len(tables) == 3  # methods, sweep, smooth sweep
    for rows in tables:
        assert len(rows) >= 3 and set("".join(rows[1])) <= set("-:")
        assert all(len(r) == len(rows[0]) for r in rows), rows
    assert [r[0] for r in tables[0][2:]] == ["euler", "rk4", "dopri5", "ltc-fused"]


def test_markdown_escapes_a_bar_in_a_cell(report):
    _, rep, _ = report
    odd = json.loads(json.dumps(rep))
    odd["methods"][0]["name"] = "a|b"
    rows = _tables(markdown(odd))[0]
    assert all(len(r) == len(rows[0]) for r in rows) and rows[2][0] == "a\\|b"


def test_threads_are_set_for_the_run_and_restored():
    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


@pytest.mark.parametrize(
    "content, fragment",
    [
        (b"\x00\x01garbage bytes, not a torch file", "is not a checkpoint torch.load can read"),
        (None, "holds no model weights"),  # a readable torch file without weights
    ],
)
def test_bad_checkpoint_is_a_value_error_naming_the_option(tmp_path, content, fragment):
    path = tmp_path / "bad.pt"
    if content is None:
        torch.save({"model": [1, 2, 3]}, path)
    else:
        path.write_bytes(content)
    with pytest.raises(ValueError, match="--checkpoint") as err:
        read_checkpoint(path)
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_missing_checkpoint_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="--checkpoint: no such file"):
        read_checkpoint(tmp_path / "nothing.pt")


def test_checkpoint_of_other_sizes_names_the_options_it_was_trained_with(report, tmp_path):
    out, _, _ = report
    settings = CompareSettings(**{**TINY, "hidden_dim": 16}, methods=("euler",), checkpoint=str(out / "model.pt"))
    with pytest.raises(ValueError, match="--checkpoint: does not fit.*--hidden-dim 8 --rank 2"):
        run_compare(settings, tmp_path, log=lambda m: None)


def test_unknown_method_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="unknown method.*'rk5'"):
        run_compare(CompareSettings(methods=("rk5",)), tmp_path)
