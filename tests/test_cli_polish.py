"""The command line as a newcomer meets it: help with examples, the version, one-line user errors."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import vmunet
from vmunet.cli.main import SUBCOMMANDS, build_parser, main

ROOT = Path(__file__).resolve().parents[1]


def _help(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as info:
        main([*argv, "--help"])
    assert info.value.code == 0
    return capsys.readouterr().out


def test_top_level_help_lists_every_subcommand_with_examples(capsys):
    text = _help([], capsys)
    for name in SUBCOMMANDS:
        assert re.search(rf"^\s+{name}\s+\S", text, re.M), f"{name} missing from vmunet --help"
        assert f"vmunet {name} " in text, f"no example of vmunet {name} in vmunet --help"
    assert "--version" in text


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_subcommand_help_has_a_description_and_an_example(name, capsys):
    text = _help([name], capsys)
    assert text.startswith(f"usage: vmunet {name}")
    assert "example" in text.lower()
    # every example line is a real invocation of this subcommand, and parses
    examples = [ln.strip() for ln in text.splitlines() if ln.strip().startswith(f"vmunet {name}")]
    assert examples, f"vmunet {name} --help shows no example command"
    parser = build_parser()
    for line in examples:
        argv = line.split("#")[0].split()[1:]
        parser.parse_args(argv)  # SystemExit (exit 2) if an example is not valid syntax


def test_version_flag(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"vmunet {vmunet.__version__}"


def test_python_dash_m_matches_console_script():
    out = subprocess.run(
        [sys.executable, "-m", "vmunet", "--version"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0 and out.stdout.strip() == f"vmunet {vmunet.__version__}"


def test_version_is_in_the_changelog():
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert re.search(rf"^## \[?{re.escape(vmunet.__version__)}\]?", changelog, re.M)


def test_no_subcommand_prints_help_and_exits_2(capsys):
    assert main([]) == 2
    assert "usage: vmunet" in capsys.readouterr().out


@pytest.fixture
def files(tmp_path):
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("model:\n  nmae: vmunet_tiny\n")  # misspelled key
    not_yaml = tmp_path / "broken.yaml"
    not_yaml.write_text("model: [unclosed\n")
    not_ckpt = tmp_path / "model.pt"
    not_ckpt.write_bytes(b"this is not a checkpoint")
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    return {
        "bad": str(bad_yaml),
        "broken": str(not_yaml),
        "ckpt": str(not_ckpt),
        "file": str(a_file),
        "missing": str(tmp_path / "does_not_exist"),
        "out": str(tmp_path / "out"),
    }


# (argv template, what the one line must mention)
MISTAKES = [
    ("train {missing}.yaml", "does_not_exist.yaml"),
    ("train {bad}", "model.nmae"),
    ("train {broken}", "broken.yaml"),
    ("train demo --set train.epoch=2", "train.epochs"),
    ("test {bad} --checkpoint {ckpt}", "model.nmae"),
    ("test demo --checkpoint {missing}.pt", "does_not_exist.pt"),
    ("test demo --checkpoint {ckpt}", "model.pt"),
    ("segment {missing} --checkpoint {ckpt} --output {out}", "model.pt"),
    ("segment {file} --checkpoint {missing}.pt --output {out}", "does_not_exist.pt"),
    ("evaluate --pred {missing} --label {missing}", "does_not_exist"),
    ("prepare isic2017 --raw {missing} --output {out}", "does_not_exist"),
    ("demo --epochs 0", "--epochs"),
    ("demo --output {file}", "file.txt"),
    ("demo --output {out} --set train.epoch=2", "train.epochs"),
]


@pytest.mark.parametrize(
    ("template", "needle"), MISTAKES, ids=[m[0].split()[0] + str(i) for i, m in enumerate(MISTAKES)]
)
def test_user_mistakes_give_one_line_and_exit_2(template, needle, files, capsys):
    argv = template.format(**files).split()
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("vmunet")]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"vmunet {argv[0]}: error: ")
    assert needle in lines[0]


def test_a_mistake_in_a_real_process_has_no_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "vmunet", "train", str(tmp_path / "nope.yaml")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "nope.yaml" in proc.stderr
