"""results.json and its table (lnjax.experiments.results, lnjax.experiments.tables): every
seed's history, and older files of one history per (method, batch size)."""

import json

import numpy as np

from lnjax.experiments import results, tables

OLD = {"ln": {"16": {"epoch": [1, 2], "test_error": [0.3, 0.1]}}}  # before --seeds
NEW = {"ln": {"16": {"0": {"epoch": [1, 2], "test_error": [0.3, 0.1]},
                     "1": {"epoch": [1, 2], "test_error": [0.5, 0.2]}}}}


def test_old_files_read_as_one_seed():
    assert results.seed_histories(OLD["ln"]["16"]) == {"0": OLD["ln"]["16"]}
    assert results.first_seed(OLD) == results.first_seed(NEW) == {
        "ln": {"16": {"epoch": [1, 2], "test_error": [0.3, 0.1]}}}
    assert results.seeds_of(OLD) == ["0"] and results.seeds_of(NEW) == ["0", "1"]
    assert results.is_history({"skipped": "why", "devices": 1})


def test_mean_over_seeds():
    mean = results.mean_runs(NEW)["ln"]["16"]
    assert mean["epoch"] == [1, 2]
    np.testing.assert_allclose(mean["test_error"], [0.4, 0.15])
    assert results.mean_runs(OLD) == OLD


def test_write_json_replaces_the_file_whole(tmp_path):
    path = tmp_path / "deep" / "results.json"
    results.write_json(str(path), {"runs": NEW})
    results.write_json(str(path), {"runs": OLD})
    assert json.loads(path.read_text()) == {"runs": OLD}
    assert sorted(p.name for p in path.parent.iterdir()) == ["results.json"]


def test_table_of_old_and_new_files():
    columns = [("test error %", "test_error", "pct")]
    assert tables.summary_table(OLD, columns=columns).splitlines()[-1] == "| ln | 16 | 10.00 |"
    new = tables.summary_table(NEW, columns=columns)
    assert new.splitlines()[-1] == f"| ln | 16 | 2 | 15.00 ± {100 * np.std([0.1, 0.2], ddof=1):.2f} |"
    assert tables.seeds_note(OLD) == ""
    summary = tables.summary({"runs": NEW}, columns)
    assert summary == new + "\n\n" + tables.seeds_note(NEW) + "\n"
