"""`vmunet train` / `vmunet test` end to end on synthetic lesions (tiny net, 2 steps), and CLI errors."""

from __future__ import annotations

import json

import pytest

from vmunet.cli.main import main
from vmunet.data import make_synthetic_lesions
from vmunet.train import load_training_checkpoint

ARGS = [
    "model.name=_trainkit:TinyNet",
    "model.in_channels=3",
    "model.out_channels=1",
    "model.overrides={}",
    "data.kind=isic",
    "data.size=[32, 32]",
    "data.batch_size=4",
    "data.num_workers=0",
    "data.normalization={kind: minmax}",
    "train.epochs=1",
    "train.max_steps_per_epoch=2",
]


def test_train_resume_and_test_from_the_command_line(tmp_path, capsys):
    data = make_synthetic_lesions(tmp_path / "data", n=14, size=32, seed=0)
    out = tmp_path / "run"
    common = ["--set", *ARGS, f"data.root={data}", "--output", str(out), "--device", "cpu"]
    assert main(["train", "isic17", *common]) == 0
    assert "best validation Dice" in capsys.readouterr().out
    assert load_training_checkpoint(out / "last.pt")["step"] == 2
    # --resume continues the same run to a later epoch count.
    assert main(["train", "isic17", *common, "--set", "train.epochs=2", "--resume"]) == 0
    ckpt = load_training_checkpoint(out / "last.pt")
    assert (ckpt["epoch"], ckpt["step"]) == (2, 4)
    assert [r["epoch"] for r in ckpt["metrics"]["history"]] == [1, 2]
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2]

    cfg = out / "config.yaml"  # the resolved config saved beside the checkpoints
    assert main(["test", str(cfg), "--checkpoint", str(out / "best.pt")]) == 0
    printed = capsys.readouterr().out
    assert "ISIC protocol" in printed and "dsc" in printed
    assert (out / "best.test.json").is_file()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--set", "train.epoch=2"], "unknown key 'train.epoch'; did you mean 'train.epochs'?"),
        (
            ["--set", "data.root=/no/such/folder"],
            "key 'data.root' points to '/no/such/folder', which does not exist",
        ),
        (["--set", "train.amp=fp16", "data.root=."], "train.amp=fp16 needs a CUDA device"),
    ],
)
def test_user_mistakes_exit_2_with_one_line(argv, message, capsys, tmp_path):
    assert main(["train", "isic17", *argv, "--output", str(tmp_path), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_help_lists_both_commands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "train" in out and "test" in out
