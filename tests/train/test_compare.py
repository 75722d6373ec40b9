"""vmunet compare: tiny models, one short epoch each, on the demo data."""

from __future__ import annotations

import csv
import json

import pytest

from vmunet.cli.main import main
from vmunet.demo import QUICK_OVERRIDES
from vmunet.errors import VmunetUserError
from vmunet.train.compare import compare_models


def test_compare_cli_trains_each_model_and_writes_table_and_plot(tmp_path, capsys):
    out = tmp_path / "cmp"
    sets = [o for o in QUICK_OVERRIDES if not o.startswith(("train.epochs", "scheduler.t_max"))]
    code = main(
        ["compare", "demo", "--models", "vmunet_tiny,monai_basicunet_2d", "--output", str(out)]
        + ["--epochs", "1", "--device", "cpu", "--set", *sets, "model.overrides.full_res_skip=8"]
    )
    console = capsys.readouterr().out
    assert code == 0
    assert "| vmunet_tiny |" in console and "| monai_basicunet_2d |" in console
    rows = list(csv.DictReader((out / "comparison.csv").open()))
    assert [r["model"] for r in rows] == ["vmunet_tiny", "monai_basicunet_2d"]
    for r in rows:
        assert r["error"] == ""
        assert int(r["epochs"]) == 1  # equal epochs, from --epochs
        assert 0.0 <= float(r["test_dice"]) <= 1.0
        # a high-water mark: the import peak may already exceed what one tiny epoch adds
        assert float(r["seconds_per_epoch"]) > 0
        assert float(r["peak_memory_mb"]) >= float(r["rss_before_mb"]) > 0
        assert r["memory_kind"] == "peak RSS of the model's process"
    # parameters are those of the models each run built (independently counted here)
    import vmunet

    for r, name, kw in (
        (rows[0], "vmunet_tiny", {"full_res_skip": 8}),  # the recipe's own model keeps its overrides
        (rows[1], "monai_basicunet_2d", {}),  # others: registered defaults
    ):
        model = vmunet.create_model(name, in_channels=1, out_channels=3, **kw)
        assert int(r["params"]) == sum(p.numel() for p in model.parameters())
    # each model was tested on the held-out split from its own best.pt, saved in vmunet's format
    for name in ("vmunet_tiny", "monai_basicunet_2d"):
        ckpt = vmunet.models.read_checkpoint(out / name / "best.pt")
        assert ckpt["arch"]["name"] == name and ckpt["config"]["train"]["epochs"] == 1
        assert (out / name / "best.test.json").is_file()
    assert (out / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "test Dice" in (out / "comparison.md").read_text()
    assert len(json.loads((out / "comparison.json").read_text())["rows"]) == 2


def test_compare_rejects_bad_model_lists(tmp_path):
    with pytest.raises(VmunetUserError, match="unknown model"):
        compare_models("demo", ["vmunet_tiny", "no_such_net"], tmp_path)
    with pytest.raises(VmunetUserError, match="named twice"):
        compare_models("demo", ["vmunet_tiny", "vmunet_tiny"], tmp_path)
    with pytest.raises(VmunetUserError, match="at least one"):
        compare_models("demo", [], tmp_path)
