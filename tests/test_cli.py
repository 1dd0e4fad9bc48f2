"""The ``ichlab`` command end to end: help for every subcommand, a quick main job, and predict."""

from __future__ import annotations

import random
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from ichlab import SUBTYPES
from ichlab.cli import COMMANDS

ICHLAB = [sys.executable, "-m", "ichlab.cli"]


def run_ichlab(*arguments: str, cwd: Path | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([*ICHLAB, *arguments], cwd=cwd, capture_output=True, text=True, timeout=timeout)


def test_console_script_installed():
    script = Path(sys.executable).parent / "ichlab"
    assert script.is_file(), f"the ichlab console script is missing beside {sys.executable}; reinstall with pip install -e ."


def test_help_lists_every_subcommand():
    result = run_ichlab("--help")
    assert result.returncode == 0, result.stderr
    for name in COMMANDS:
        assert name in result.stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_subcommand_help(command):
    result = run_ichlab(command, "--help")
    assert result.returncode == 0, result.stderr
    assert "usage: ichlab" in result.stdout


def test_predict_without_run_folder_fails_clearly(tmp_path):
    result = run_ichlab("predict", str(tmp_path), "--run", str(tmp_path / "missing-run"))
    assert result.returncode != 0
    assert "best.pt" in result.stderr
    assert "ichlab reproduce" in result.stderr


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory) -> Path:
    """One quick main job for the whole module: all three paths, few bootstrap replicates."""
    out_dir = tmp_path_factory.mktemp("run") / "quick"
    result = run_ichlab("reproduce", "--mode", "quick", "--bootstrap", "50", "--no-progress", "--out", str(out_dir), timeout=1500)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return out_dir


@pytest.mark.slow
def test_reproduce_writes_run_folder(quick_run):
    for name in ("config.json", "log.txt", "f1_table.csv", "f1_table.md", "report.md", "gradcam_subtypes.png", "cam_scores.csv"):
        assert (quick_run / name).is_file(), name
    for arch in ("2d", "2.5d", "lstm"):
        assert (quick_run / arch / "best.pt").is_file()
        for split in ("val", "test"):
            assert (quick_run / "predictions" / f"{arch}_{split}.csv").is_file()


@pytest.mark.slow
def test_reproduce_f1_table_covers_models_and_subtypes(quick_run):
    table = pd.read_csv(quick_run / "f1_table.csv", index_col=0)
    for subtype in SUBTYPES:
        assert subtype in table.index
    for title in ("2D", "2.5D", "LSTM"):
        assert any(column.startswith(title) for column in table.columns), table.columns


@pytest.mark.slow
def test_reproduce_predictions_hold_probabilities(quick_run):
    table = pd.read_csv(quick_run / "predictions" / "lstm_test.csv")
    probabilities = table[[f"prob_{subtype}" for subtype in SUBTYPES]].to_numpy()
    assert len(table) > 0
    assert (probabilities >= 0).all()
    assert (probabilities <= 1).all()


@pytest.mark.slow
def test_predict_orders_shuffled_real_series(quick_run, real_ct_series, tmp_path):
    shuffled = tmp_path / "shuffled"
    shuffled.mkdir()
    originals = sorted(real_ct_series.glob("*.dcm"))
    new_names = [f"{number:02d}.dcm" for number in range(1, len(originals) + 1)]
    random.Random(7).shuffle(new_names)
    renamed = {}
    for original, new_name in zip(originals, new_names):
        shutil.copy(original, shuffled / new_name)
        renamed[new_name] = original.name

    out_dir = tmp_path / "out"
    result = run_ichlab("predict", str(shuffled), "--run", str(quick_run), "--out", str(out_dir))
    assert result.returncode == 0, result.stderr[-5000:]
    assert "nothing clinical" in result.stdout

    table = pd.read_csv(out_dir / "probabilities_lstm.csv")
    assert len(table) == 28
    original_order = [renamed[name] for name in table["file"]]
    assert original_order == sorted(original_order)
    assert len(list(out_dir.glob("gradcam_lstm_*.png"))) == 1


@pytest.mark.slow
def test_predict_reads_files_without_extension(quick_run, real_ct_series, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    for original in sorted(real_ct_series.glob("*.dcm")):
        shutil.copy(original, bare / original.stem)  # PACS exports often carry no extension

    missed = run_ichlab("predict", str(bare), "--run", str(quick_run), "--out", str(tmp_path / "missed"))
    assert missed.returncode == 2
    assert '--pattern "*"' in missed.stderr

    result = run_ichlab("predict", str(bare), "--run", str(quick_run), "--pattern", "*", "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(pd.read_csv(tmp_path / "out" / "probabilities_lstm.csv")) == 28


@pytest.mark.slow
def test_predict_rejects_unknown_subtype(quick_run, tmp_path):
    result = run_ichlab("predict", str(tmp_path), "--run", str(quick_run), "--subtype", "bleeding")
    assert result.returncode != 0
    assert "invalid choice" in result.stderr


@pytest.mark.slow
def test_reproduce_same_seed_same_table(tmp_path):
    tables = []
    for name in ("first", "second"):
        out_dir = tmp_path / name
        result = run_ichlab(
            "reproduce", "--mode", "quick", "--archs", "2d", "--image-size", "64",
            "--bootstrap", "20", "--no-progress", "--out", str(out_dir),
        )
        assert result.returncode == 0, result.stderr[-5000:]
        tables.append((out_dir / "f1_table.csv").read_text())
        tables.append((out_dir / "predictions" / "2d_test.csv").read_text())
    assert tables[0] == tables[2]
    assert tables[1] == tables[3]


def test_user_error_prints_message_not_traceback(tmp_path):
    result = run_ichlab("scan", str(tmp_path / "missing-folder"))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "missing-folder" in result.stderr


def test_reproduce_rejects_zero_epochs(tmp_path):
    result = run_ichlab("reproduce", "--epochs", "0", "--out", str(tmp_path / "run"))
    assert result.returncode == 2
    assert "argument --epochs: 0 is invalid" in result.stderr
    assert not (tmp_path / "run").exists()


def test_reproduce_rejects_folder_without_rsna_layout(tmp_path):
    result = run_ichlab("reproduce", "--data", str(tmp_path), "--out", str(tmp_path / "run"))
    assert result.returncode == 2
    assert "no RSNA layout" in result.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_predict_replaces_earlier_outputs(quick_run, real_ct_series, tmp_path):
    out_dir = tmp_path / "out"
    for subtype in ("epidural", "subdural"):
        result = run_ichlab("predict", str(real_ct_series), "--run", str(quick_run), "--subtype", subtype, "--out", str(out_dir))
        assert result.returncode == 0, result.stderr[-3000:]
    overlays = list(out_dir.glob("gradcam_lstm_*.png"))
    assert len(overlays) == 1
    assert "subdural" in overlays[0].name


def test_prepare_rsna_source_needs_data_folder():
    result = run_ichlab("prepare", "--source", "rsna", "--mode", "quick")
    assert result.returncode == 2
    assert "--source rsna needs --data" in result.stderr


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["phantom", "--out", "x", "--patients", "0"], "argument --patients: 0 is invalid; pass 1 or more"),
        (["train", "--arch", "lstm", "--context-slices", "4"], "argument --context-slices: 4 is even; pass an odd number"),
        (["train", "--arch", "2d", "--batch-size", "many"], "argument --batch-size: 'many' is not a whole number"),
        (["prepare", "--workers", "-1"], "argument --workers: -1 is invalid; pass 0 or more"),
        (["bench", "--sizes", "128", "0"], "argument --sizes: 0 is invalid; pass 1 or more"),
        (["phantom", "--out", "x", "--patients", "1", "--size", "3"], "argument --size: 3 is invalid; pass 16 or more"),
        (["reproduce", "--seed", "-1"], "argument --seed: -1 is invalid; pass a number from 0 to 4294967295"),
        (["train", "--arch", "2d", "--lr", "nan"], "argument --lr: nan is invalid; pass a positive number"),
        (["train", "--arch", "2d", "--image-size", "20000"], "argument --image-size: 20000 is invalid; pass a number from 16 to 1024"),
        (["train", "--arch", "lstm", "--chunk-size", "100000"], "argument --chunk-size: 100000 is invalid"),
    ],
)
def test_invalid_number_names_option(arguments, message, capsys):
    from ichlab.cli import build_parser

    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(arguments)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_help_hides_empty_defaults():
    result = run_ichlab("train", "--help")
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())  # argparse wraps long help lines
    assert "(default: None)" not in text
    assert "(default: False)" not in text
    assert "(default: 16)" in text  # --chunk-size keeps its real default


def test_scan_without_ct_fails_on_stderr(tmp_path):
    (tmp_path / "notes.dcm").write_text("not a DICOM file")
    result = run_ichlab("scan", str(tmp_path), "--no-progress")
    assert result.returncode == 2
    assert "error: no readable CT slices" in result.stderr
    assert "notes.dcm: not a DICOM file" in result.stdout


def test_verbose_shows_traceback_of_command_error(tmp_path):
    result = run_ichlab("-v", "prepare", "--source", "rsna", "--mode", "quick")
    assert result.returncode != 0
    assert "Traceback" in result.stderr
    assert "--source rsna needs --data" in result.stderr


def test_phantom_rejects_reversed_slice_range(tmp_path):
    result = run_ichlab("phantom", "--out", str(tmp_path / "data"), "--patients", "1", "--slices", "10", "3")
    assert result.returncode == 2
    assert "--slices 10 3: MIN is above MAX" in result.stderr
    assert not (tmp_path / "data").exists()
