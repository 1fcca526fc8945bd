"""A model_dir whose state files are damaged: train.py names the file and the way out.

Each case trains a one-epoch run in-process through train.py's main, damages
one file, runs the same command again and checks the one error line (exit 1,
no traceback); then follows the remedy the line gives and checks that the
run goes on.
"""

from __future__ import annotations

import json
import shutil

from model.commands import TRAIN


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("train.py: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _cut(path) -> None:
    text = path.read_text()
    path.write_text(text[: len(text) // 2])


def test_a_run_json_cut_in_half_is_named_and_deleting_it_resumes(run, capsys):
    argv, model_dir = run
    _cut(model_dir / "run.json")
    assert TRAIN.main([*argv, "--epochs=2"]) == 1
    line = _error_line(capsys)
    assert f"{model_dir / 'run.json'} is damaged: not valid JSON" in line and "delete it" in line
    (model_dir / "run.json").unlink()
    assert TRAIN.main([*argv, "--epochs=2"]) == 0
    assert [entry["epoch"] for entry in json.loads((model_dir / "history.json").read_text())] == [0, 1]


def test_a_damaged_backup_state_is_named_and_deleting_the_backup_trains_again(run, capsys):
    """Three damages, each named in its line; the remedy, the same for all, is followed once."""
    argv, model_dir = run
    state = model_dir / "backup" / "state.json"
    whole = state.read_text()
    weights = json.loads(whole)["weights"]
    kept = (model_dir / "backup" / weights).read_bytes()

    def cut():
        _cut(state)
        return "not valid JSON"

    def weights_gone():
        (model_dir / "backup" / weights).unlink()
        return f"the weights file it names, {weights}, is not there"

    def not_an_object():
        state.write_text("[1, 2]\n")
        return "it does not hold what it should"

    for damage in (cut, weights_gone, not_an_object):
        state.write_text(whole)
        (model_dir / "backup" / weights).write_bytes(kept)
        expected = damage()
        assert TRAIN.main([*argv, "--epochs=2"]) == 1
        line = _error_line(capsys)
        assert f"{state} is damaged: {expected}" in line, (damage.__name__, line)
        assert f"delete {model_dir / 'backup'} to train again from the first epoch" in line
    shutil.rmtree(model_dir / "backup")
    assert TRAIN.main([*argv, "--epochs=1"]) == 0


def test_a_damaged_history_is_named_and_deleting_it_goes_on(run, capsys):
    argv, model_dir = run
    (model_dir / "history.json").write_text('{"epoch": 0}\n')
    assert TRAIN.main([*argv, "--epochs=2"]) == 1
    line = _error_line(capsys)
    assert f"{model_dir / 'history.json'} is damaged: it does not hold what it should" in line, line
    assert "delete it to go on training" in line
    (model_dir / "history.json").unlink()
    assert TRAIN.main([*argv, "--epochs=2"]) == 0
    assert [entry["epoch"] for entry in json.loads((model_dir / "history.json").read_text())] == [1]


def test_a_damaged_results_file_of_a_finished_run_is_named(run, capsys):
    argv, model_dir = run
    _cut(model_dir / "results.json")
    assert TRAIN.main(argv) == 1
    line = _error_line(capsys)
    assert f"{model_dir / 'results.json'} is damaged" in line and "delete it to evaluate" in line
