"""Every command and code block of README.md and of every docs/*.md page runs (with tiny settings).

Each fenced block in those files is preceded by ``<!-- readme-test: NAME -->`` (names unique
across all the files); :func:`test_every_block_is_marked_and_has_a_test` fails when a fenced block
(also one indented inside a list) has no marker, a marker has no test here, or a page holds an
indented code block instead. How each block is exercised:

* ``vmunet ...`` lines run in-process through ``vmunet.cli.main.main`` in a temporary
  working folder, exactly as written, plus tiny-setting arguments appended
  (:data:`TINY_TRAIN` for ``train``, :data:`TINY_TRAIN_3D` for the 3-D recipes, ``--quick``
  for ``demo``, ``--no-count-check`` for ``prepare`` because the fake downloads are subsets);
  each must exit 0. A line that two blocks share (the README's ``train`` block repeats
  docs/recipes.md's isic17 lines) runs once.
* Paths that name public downloads or weights (``downloads/...``, ``/data/btcv``,
  ``pretrained/...``) are filled with small generated stand-ins in the documented layouts first.
* Python blocks run with ``exec`` in that folder, after the substitutions listed next
  to each test (``vmunet_small`` -> ``vmunet_tiny``, ``quick=True`` added to ``run_demo``).
* ``make demo`` / ``make test`` are not re-run here (``make test`` is the command that
  runs this file; ``make demo`` is ``vmunet demo`` after the set-up, and ``vmunet demo``
  runs below in quick mode); their block is checked against the Makefile and ``.ci/run``.
  ``pip install -e ".[cuda]"`` is not run (no network, no CUDA): the extra is checked in
  pyproject.toml. ``torchrun`` runs with 2 gloo processes on the CPU (slow-marked).
* ``text`` blocks are checked against what they describe: the raw layouts are the folders the
  fake downloads are built in, the checkpoint format of docs/contracts.md is held against a
  checkpoint the trainer wrote.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from vmunet.cli.main import main
from vmunet.data.io import write_image

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
# The files whose code blocks run here: the README first, then every page of docs/.
DOC_FILES = [README, *sorted((ROOT / "docs").glob("*.md"))]
sys.path.insert(0, str(ROOT / "tests" / "models"))

MARKED = re.compile(
    r"<!-- readme-test: (?P<name>[\w-]+) -->\n```(?P<lang>\w*)\n(?P<body>.*?)^```$", re.S | re.M
)
# Any fence line, also an indented one (inside a list item) or a ~~~ fence: each must be marked.
FENCE = re.compile(r"^[ \t]*(?:```|~~~)", re.M)

# Appended to every `vmunet train` line: the tiny model, one step, 64x64, CPU.
TINY_SET = [
    "model.name=vmunet_tiny",
    "model.overrides={}",
    "data.size=[64, 64]",
    "data.batch_size=2",
    "data.num_workers=0",
    "train.epochs=1",
    "train.max_steps_per_epoch=1",
    "train.val_images=1",
]
TINY_TRAIN = ["--device", "cpu", "--set", *TINY_SET]
TINY_TEST = ["--device", "cpu", "--set", "data.size=[64, 64]", "data.batch_size=2", "data.num_workers=0"]
# The same for the 3-D recipes: the tiny 3-D model, one 32x32x16 patch, one step, windows without overlap.
TINY_SET_3D = [
    "model.name=vmunet3d_tiny",
    "model.overrides={}",
    "data.size=[32, 32, 16]",
    "data.samples_per_volume=1",
    "data.batch_size=1",
    "data.num_workers=0",
    "train.epochs=1",
    "train.max_steps_per_epoch=1",
    "eval.overlap=0",
    "eval.sw_batch_size=4",
]
TINY_TRAIN_3D = ["--device", "cpu", "--set", *TINY_SET_3D]
TINY_TEST_3D = ["--device", "cpu", "--set", "eval.overlap=0", "eval.sw_batch_size=4"]

# Block name -> the test that runs it (checked by test_every_block_is_marked_and_has_a_test).
HANDLED = {
    # README.md
    "fresh-machine": "test_fresh_machine_commands",
    "train": "test_prepare_and_recipes",
    "segment": "test_segment_and_evaluate",
    "monai-short": "test_monai_short_block",
    "plan": "test_plan_block",
    # docs/*.md
    "demo-cli": "test_demo_cli_and_outputs",
    "demo-python": "test_demo_python",
    "install-gpu": "test_install_gpu",
    "backends": "test_backends_block",
    "prepare": "test_prepare_and_recipes",
    "raw-layouts": "test_prepare_and_recipes",
    "recipes": "test_prepare_and_recipes",
    "recipes3d": "test_recipes3d_block",
    "segment-python": "test_segment_and_evaluate",
    "evaluate": "test_segment_and_evaluate",
    "metrics": "test_metrics_block",
    "monai": "test_monai_block",
    "model3d": "test_model3d_block",
    "weights": "test_weights_block",
    "torchrun": "test_torchrun_block",
    "checkpoint-format": "test_checkpoint_format_block",
    "deploy": "test_deploy_block",
}


@dataclass(frozen=True)
class Block:
    lang: str
    body: str
    path: Path  # the file it is in


def _blocks() -> dict[str, Block]:
    found: dict[str, Block] = {}
    for path in DOC_FILES:
        for m in MARKED.finditer(path.read_text()):
            name = m["name"]
            assert name not in found, f"block name {name!r} used in {found[name].path.name} and {path.name}"
            found[name] = Block(m["lang"], m["body"], path)
    return found


def _indented_code(text: str) -> list[str]:
    """Lines outside fences that Markdown would render as an indented code block."""
    out, in_fence, prev = [], False, ""
    for line in text.splitlines():
        if FENCE.match(line):
            in_fence = not in_fence
        elif not in_fence and not prev.strip() and re.match(r"( {4}|\t)\S", line):
            out.append(line)
        prev = line
    return out


BLOCKS = _blocks()


def _commands(body: str) -> list[list[str]]:
    """The command lines of a bash block (comments dropped), split like a shell would."""
    out = []
    for line in body.splitlines():
        argv = shlex.split(line, comments=True)
        if argv:
            out.append(argv)
    return out


def _run_vmunet(argv: list[str], extra: list[str] = ()) -> None:
    assert argv[0] == "vmunet", argv
    code = main([*argv[1:], *extra])
    assert code == 0, f"{shlex.join(argv)} exited with {code}"


def _exec(name: str, subs: dict[str, str] = None) -> dict:
    block = BLOCKS[name]
    body = block.body
    assert block.lang == "python"
    for old, new in (subs or {}).items():
        assert old in body, f"{block.path.name} block {name!r} no longer contains {old!r}; update the test"
        body = body.replace(old, new)
    scope: dict = {"__name__": f"readme_{name}"}
    exec(compile(body, f"{block.path.relative_to(ROOT)}[{name}]", "exec"), scope)
    return scope


def test_every_block_is_marked_and_has_a_test():
    assert len(DOC_FILES) > 1, "docs/*.md pages not found"
    for path in DOC_FILES:
        text = path.read_text()
        rel = path.relative_to(ROOT)
        n_fences = len(FENCE.findall(text))
        assert n_fences % 2 == 0, f"{rel}: unbalanced ``` fences"
        n_marked = len(list(MARKED.finditer(text)))
        assert n_marked == n_fences // 2, f"{rel}: every fenced block needs a <!-- readme-test: NAME --> line"
        assert not _indented_code(text), f"{rel}: use a marked fenced block, not indented code"
    assert set(BLOCKS) == set(HANDLED)
    for test in set(HANDLED.values()):
        assert test in globals(), test


def test_readme_has_no_unmeasured_placeholders():
    for path in DOC_FILES:
        text = path.read_text()
        for placeholder in ("DEMO_TIME", "TEST_TIME", "DEMO_DICE", "TODO", "XXX"):
            assert placeholder not in text, f"{path.name}: {placeholder}"


def test_fresh_machine_commands():
    # Not re-run (see the module docstring); check that they exist and what CI calls.
    block = BLOCKS["fresh-machine"]
    body = block.body
    assert block.lang == "bash"
    assert [c[:2] for c in _commands(body)] == [["make", "demo"], ["make", "test"]]
    assert text_is_first_block(), "the two set-up commands must be the README's first block"
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^demo: .*\n\t.*vmunet demo", makefile, re.M)
    assert re.search(r"^test: .*\n(\t.*\n)*\t.*pytest", makefile, re.M)
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def text_is_first_block() -> bool:
    text = README.read_text()
    first = next(MARKED.finditer(text))
    return first["name"] == "fresh-machine" and FENCE.search(text).start() > first.start()


def test_install_gpu():
    block = BLOCKS["install-gpu"]
    body = block.body
    assert block.lang == "bash"
    assert _commands(body) == [["pip", "install", "-e", ".[cuda]"]]
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(dep.startswith("mamba-ssm") for dep in extras["cuda"])


def test_backends_block(capsys):
    from vmunet.ops import ENV_VAR, available_backends

    assert ENV_VAR in BLOCKS["backends"].path.read_text()
    _exec("backends")
    out = capsys.readouterr().out
    assert str(available_backends()) in out


def test_metrics_block(capsys):
    from monai.metrics import compute_hausdorff_distance

    _exec("metrics")
    dice, pooled, maxd = (float(x) for x in capsys.readouterr().out.split())
    # independent references: hand count for Dice, MONAI for the max-of-directed HD95
    label = np.zeros((64, 64), bool)
    label[10:40, 10:40] = True
    pred = np.zeros((64, 64), bool)
    pred[12:44, 10:36] = True
    assert dice == pytest.approx(2 * (pred & label).sum() / (pred.sum() + label.sum()))
    ref = compute_hausdorff_distance(
        torch.from_numpy(pred)[None, None],
        torch.from_numpy(label)[None, None],
        percentile=95,
        spacing=[0.5, 0.8],
    )
    assert maxd == pytest.approx(float(ref), rel=1e-5)
    assert pooled <= maxd


def test_monai_block(capsys):
    # vmunet_small -> vmunet_tiny keeps it fast; the code path is the same.
    _exec("monai", {'"vmunet_small"': '"vmunet_tiny"'})
    out = capsys.readouterr().out.split()
    assert np.isfinite(float(out[0]))
    assert "torch.Size([1, 3, 100, 90])" in " ".join(out[1:])


def test_monai_short_block():
    # the README's few lines: vmunet_small -> vmunet_tiny keeps it fast; the code path is the same
    scope = _exec("monai-short", {'"vmunet_small"': '"vmunet_tiny"'})
    assert torch.isfinite(scope["loss"])
    grads = [p.grad for p in scope["model"].parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)


def test_model3d_block(capsys):
    # the tiny 3-D model on a smaller volume and ROI keeps it fast; the code path is the same
    _exec(
        "model3d",
        {
            '"vmunet3d_small"': '"vmunet3d_tiny"',
            "torch.randn(1, 1, 120, 100, 40)": "torch.randn(1, 1, 40, 36, 20)",
            "(96, 96, 32)": "(32, 32, 16)",
        },
    )
    out = capsys.readouterr().out
    assert "(32, 32, 16)" in out and "torch.Size([1, 9, 40, 36, 20])" in out


def _public_vmunet_tiny_state_dict(seed: int) -> dict:
    from vmunet_public_reference import public_key_shapes, random_state_dict

    tiny = {"depths": (1, 1, 1, 1), "depths_decoder": (1, 1, 1, 1), "d_state": 4, "dims": 16}
    return random_state_dict(public_key_shapes(in_chans=3, num_classes=1, **tiny), seed=seed)


def _vmamba_tiny_state_dict(seed: int) -> dict:
    from vmunet_public_reference import public_key_shapes, random_state_dict

    shapes = public_key_shapes(
        in_chans=3,
        num_classes=1,
        depths=(1, 1, 2, 1),
        depths_decoder=(0, 0, 0, 0),
        dims=16,
        d_state=4,
        prefix="",
    )
    shapes = {k: v for k, v in shapes.items() if k.startswith(("patch_embed.", "layers."))}
    shapes.update(
        {"norm.weight": (128,), "norm.bias": (128,), "head.weight": (1000, 128), "head.bias": (1000,)}
    )
    return {"model": random_state_dict(shapes, seed=seed)}


def test_weights_block(tmp_path, monkeypatch, capsys):
    # Stand-ins with the public key names and shapes of the tiny variant (vmunet_small -> vmunet_tiny).
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pretrained").mkdir()
    public = _public_vmunet_tiny_state_dict(seed=1)
    torch.save(public, tmp_path / "pretrained" / "vmunet_isic17.pth")
    vmamba = _vmamba_tiny_state_dict(seed=2)
    torch.save(vmamba, tmp_path / "pretrained" / "vmamba_small_e238_ema.pth")
    scope = _exec("weights", {'"vmunet_small"': '"vmunet_tiny"'})
    model = scope["model"]
    # the VMamba patch embedding summed over RGB went into the 1-channel model
    w = vmamba["model"]["patch_embed.proj.weight"]
    assert torch.allclose(model.state_dict()["patch_embed.proj.weight"], w.sum(1, keepdim=True))
    assert "VMamba" in capsys.readouterr().out


# --------------------------------------------------------------------------- fake public downloads


def _rgb(rng, h=20, w=24):
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _mask(h=20, w=24):
    m = np.zeros((h, w), np.uint8)
    m[5:15, 6:18] = 255
    return m


def _layout_dirs() -> dict[str, list[str]]:
    """Folder names of each download as the README's raw-layout block lists them."""
    lang, body = BLOCKS["raw-layouts"].lang, BLOCKS["raw-layouts"].body
    assert lang == "text"
    out: dict[str, list[str]] = {}
    top = None
    for line in body.splitlines():
        if not line.strip():
            continue
        if not line.startswith(" "):
            top = line.strip().rstrip("/")
            out[top] = []
        else:
            out[top].append(line.split()[0])
    return out


def _fake_downloads(root: Path) -> None:
    """Small downloads in exactly the folder layouts the README documents."""
    rng = np.random.default_rng(0)
    layouts = _layout_dirs()
    assert set(layouts) == {"downloads/isic2017", "downloads/isic2018", "downloads/Abdomen/RawData"}
    for top in ("downloads/isic2017", "downloads/isic2018"):
        dirs = [entry.split("/")[0] for entry in layouts[top]]
        images = [d for d in dirs if "GroundTruth" not in d]
        for k, img_dir in enumerate(images):
            word = next(w for w in ("Training", "Validation", "Test") if w in img_dir)
            gt = next(d for d in dirs if "GroundTruth" in d and word in d)
            n = 10 if "2018" in top else 3
            for i in range(n):
                case = f"ISIC_{k:03d}{i:04d}"
                write_image(root / top / img_dir / f"{case}.jpg", _rgb(rng))
                write_image(root / top / gt / f"{case}_segmentation.png", _mask())
    # Synapse / BTCV: Training/img/imgXXXX.nii.gz + Training/label/labelXXXX.nii.gz, a few cases
    entries = layouts["downloads/Abdomen/RawData"]
    img_pat, lab_pat = entries[0], entries[1]
    assert img_pat.endswith("img0001.nii.gz") and lab_pat.endswith("label0001.nii.gz")
    for num in ("0005", "0006", "0030", "0034", "0001"):  # train, train, val, val, test
        hu = rng.integers(-1000, 1000, (40, 40, 3)).astype(np.int16)
        lab = np.zeros((40, 40, 3), np.uint8)
        lab[8:20, 8:20] = 6  # liver in BTCV numbering
        lab[24:32, 20:34] = 1  # spleen
        aff = np.diag([0.8, 0.8, 2.5, 1.0])
        for pattern, arr in ((img_pat, hu), (lab_pat, lab)):
            path = root / "downloads/Abdomen/RawData" / pattern.replace("0001", num)
            path.parent.mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(arr, aff), str(path))


def test_prepare_and_recipes(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    # The recipes are given as configs/<name>.yaml: copy the repository's files into the working folder.
    (tmp_path / "configs").mkdir()
    for name in ("isic17", "isic18", "synapse"):
        (tmp_path / "configs" / f"{name}.yaml").write_text((ROOT / "configs" / f"{name}.yaml").read_text())
    _fake_downloads(tmp_path)
    before = sorted(p.relative_to(tmp_path) for p in (tmp_path / "downloads").rglob("*"))
    for argv in _commands(BLOCKS["prepare"].body):
        _run_vmunet(argv, ["--no-count-check"])
        out = Path(argv[argv.index("--output") + 1])
        assert (out / "prepared.json").is_file()
    assert sorted(p.relative_to(tmp_path) for p in (tmp_path / "downloads").rglob("*")) == before

    commands = _commands(BLOCKS["recipes"].body)
    assert [c[1] for c in commands] == ["train", "test"] * 3
    # The README's `train` block repeats the isic17 lines of docs/recipes.md: every distinct line
    # of the two blocks runs once, in order.
    readme = _commands(BLOCKS["train"].body)
    assert [c[1] for c in readme] == ["train", "test"]
    commands += [c for c in readme if c not in commands]
    for argv in commands:
        _run_vmunet(argv, TINY_TRAIN if argv[1] == "train" else TINY_TEST)
        if argv[1] == "train":
            assert (Path(argv[argv.index("--output") + 1]) / "best.pt").is_file()
    out = capsys.readouterr().out
    assert "mIoU" in out or "miou" in out  # the ISIC table
    assert "spleen" in out and "liver" in out  # the Synapse table names organs


# --------------------------------------------------------------------------- demo and its outputs


def test_plan_block(tmp_path, monkeypatch):
    """plan -> train -> segment on the real MNI152 template arranged as an nnU-Net raw data set."""
    sys.path.insert(0, str(ROOT / "tests" / "plan"))
    from _fixtures import make_mni_dataset

    monkeypatch.chdir(tmp_path)
    plan, train, seg = _commands(BLOCKS["plan"].body)
    make_mni_dataset(Path(plan[2]), tmp_path / "work")
    _run_vmunet(plan, ["--memory-gb", "2"])
    recipe = Path(plan[plan.index("--output") + 1])
    assert recipe.is_file() and (recipe.parent / "fingerprint.json").is_file()
    tiny = [
        "train.epochs=1",
        "train.max_steps_per_epoch=1",
        "data.samples_per_volume=1",
        "data.num_workers=0",
    ]
    _run_vmunet(train, ["--device", "cpu", "--set", *tiny])
    _run_vmunet(seg, ["--device", "cpu", "--no-progress"])
    out = Path(seg[seg.index("--output") + 1])
    for src in sorted(Path(seg[2]).glob("*.nii.gz")):
        a, b = nib.load(str(src)), nib.load(str(out / src.name))
        assert a.shape == b.shape and np.allclose(a.affine, b.affine), src.name


@pytest.fixture(scope="module")
def demo_folder(tmp_path_factory):
    """Run the README's `vmunet demo` line (plus --quick) once; later blocks use its outputs."""
    work = tmp_path_factory.mktemp("readme_demo")
    cwd = os.getcwd()
    os.chdir(work)
    try:
        (argv,) = _commands(BLOCKS["demo-cli"].body)
        _run_vmunet(argv, ["--quick", "--no-progress"])
    finally:
        os.chdir(cwd)
    return work


def test_demo_cli_and_outputs(demo_folder):
    out = demo_folder / "demo_output"
    summary = json.loads((out / "summary.json").read_text())
    for rel in (
        "run/best.pt",
        "run/last.pt",
        "run/curves.png",
        "run/metrics.csv",
        "test/best.test.json",
        "evaluation.json",
        "segmentations/summary.csv",
    ):
        assert (out / rel).is_file(), rel
    scans = sorted((out / "test_scans").glob("*.nii.gz"))
    labels = sorted((out / "test_labels").glob("*.nii.gz"))
    assert [p.name for p in scans] == [p.name for p in labels] and len(scans) == summary["n_test"] > 0
    assert len(list((out / "segmentations" / "overlays").glob("*.png"))) == len(scans)
    assert set(summary["test_dice"]) == {"grey_matter", "white_matter"}
    # The demo's own numbers agree with an independent recount from the written files.
    from vmunet.data import read_image

    dices = []
    for c in (1, 2):
        per_case = []
        for lab_path in labels:
            pred = read_image(out / "segmentations" / lab_path.name).array == c
            lab = read_image(lab_path).array == c
            if lab.any():
                per_case.append(2 * (pred & lab).sum() / (pred.sum() + lab.sum()))
        dices.append(np.mean(per_case))
    assert summary["segment_mean_dice"] == pytest.approx(np.mean(dices), abs=1e-6)


def test_demo_python(demo_folder, monkeypatch, capsys):
    # quick=True added: the same calls, two training steps.
    monkeypatch.chdir(demo_folder)
    scope = _exec("demo-python", {'run_demo("demo_output")': 'run_demo("demo_output", quick=True)'})
    assert scope["summary"].epochs == 1
    assert "best validation Dice" in capsys.readouterr().out


def test_segment_and_evaluate(demo_folder, monkeypatch, capsys):
    monkeypatch.chdir(demo_folder)
    (seg,) = _commands(BLOCKS["segment"].body)
    _run_vmunet(seg, ["--no-progress"])
    scans = sorted(p.name for p in (demo_folder / "demo_output" / "test_scans").iterdir())
    assert sorted(p.name for p in (demo_folder / "masks").glob("*.nii.gz")) == scans
    assert len(list((demo_folder / "masks" / "overlays").glob("*.png"))) == len(scans)

    scope = _exec("segment-python")
    assert scope["pred"].labels.shape == (96, 96)
    assert scope["summary"].n_ok == len(scans)

    for argv in _commands(BLOCKS["evaluate"].body):
        _run_vmunet(argv, ["--no-progress"])
    result = json.loads((demo_folder / "evaluation.json").read_text())
    assert result["n_scored"] == len(scans) and result["n_skipped"] == 0
    assert "hd95" in capsys.readouterr().out


def _braced(text: str, key: str) -> str:
    """The ``{...}`` that follows ``"key": `` in text, nested braces included."""
    start = text.index(f'"{key}": {{') + len(f'"{key}": ')
    depth = 0
    for i in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[start : i + 1]
    raise AssertionError(f"unbalanced braces after {key!r}")


def test_checkpoint_format_block(demo_folder):
    # docs/contracts.md's checkpoint format, held against the checkpoint `vmunet demo` trained
    from vmunet.train import load_training_checkpoint

    lang, body = BLOCKS["checkpoint-format"].lang, BLOCKS["checkpoint-format"].body
    assert lang == "text"
    ckpt = load_training_checkpoint(demo_folder / "demo_output" / "run" / "best.pt")
    inference_keys = set(re.findall(r'"(\w+)":', _braced(body, "inference")))
    arch_keys = set(re.findall(r'"(\w+)":', _braced(body, "arch")))
    top_keys = set(re.findall(r'"(\w+)":', body)) - inference_keys - arch_keys
    state = re.search(r"training state \(([^)]*)\)", body)[1]
    top_keys |= {word.strip() for word in state.split(",")}
    documented = {"format", "vmunet_version", "torch_version", "arch", "model", "inference"}
    documented |= {"optimizer", "scheduler", "scaler", "epoch", "step", "rng", "config", "metrics"}
    assert top_keys == documented  # the parse found what the block lists
    assert top_keys <= set(ckpt), top_keys - set(ckpt)
    assert arch_keys == {"name", "kwargs"} and arch_keys <= set(ckpt["arch"])
    missing = inference_keys - set(ckpt["inference"])
    assert len(inference_keys) == 8 and not missing, missing
    assert ckpt["format"] == "vmunet" and ckpt["inference"]["activation"] in ("sigmoid", "softmax")


def _fake_btcv(root: Path) -> None:
    """Every BTCV case the Synapse manifest names, tiny, in the raw layout docs/data.md documents."""
    manifest = json.loads((ROOT / "data_manifests" / "synapse.json").read_text())
    img_pat, lab_pat = _layout_dirs()["downloads/Abdomen/RawData"][:2]
    rng = np.random.default_rng(0)
    for case in sorted({*manifest["train"], *manifest["test"]}):
        num = case.removeprefix("case")
        hu = rng.integers(-1000, 1000, (40, 40, 3)).astype(np.int16)
        lab = np.zeros((40, 40, 3), np.uint8)
        lab[8:20, 8:20] = 6  # liver in BTCV numbering
        lab[24:32, 20:34] = 1  # spleen
        for pattern, arr in ((img_pat, hu), (lab_pat, lab)):
            path = root / pattern.replace("0001", num)
            path.parent.mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(arr, np.diag([0.8, 0.8, 2.5, 1.0])), str(path))


def test_recipes3d_block(tmp_path, monkeypatch, capsys):
    # The 3-D lines of docs/3d.md as written, with 1-step tiny settings appended; /data/btcv is a
    # stand-in BTCV download (every manifest case, 40x40x3) and ct/ holds one of its volumes.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "synapse3d.yaml").write_text((ROOT / "configs" / "synapse3d.yaml").read_text())
    btcv = tmp_path / "data" / "btcv"
    _fake_btcv(btcv)
    (tmp_path / "ct").mkdir()
    scan = btcv / "Training" / "img" / "img0001.nii.gz"
    (tmp_path / "ct" / scan.name).write_bytes(scan.read_bytes())
    body = BLOCKS["recipes3d"].body
    assert "/data/btcv" in body
    commands = _commands(body.replace("/data/btcv", str(btcv)))
    assert [c[1] for c in commands] == ["train", "test", "train", "segment"]
    extra = {"train": TINY_TRAIN_3D, "test": TINY_TEST_3D, "segment": ["--no-progress"]}
    for argv in commands:
        _run_vmunet(argv, extra[argv[1]])
    assert (tmp_path / "runs" / "demo3d" / "best.pt").is_file()
    assert (tmp_path / "runs" / "synapse3d" / "best.pt").is_file()
    assert "grey_matter" in capsys.readouterr().out  # the demo3d test table
    # the 3-D label map is written on the input's own grid
    written = nib.load(str(tmp_path / "masks3d" / scan.name))
    source = nib.load(str(scan))
    assert written.shape == source.shape and np.allclose(written.affine, source.affine)


@pytest.mark.slow
def test_torchrun_block(tmp_path):
    # 4 GPUs -> 2 gloo processes on the CPU; the fake Synapse download prepared as in the README.
    (argv,) = _commands(BLOCKS["torchrun"].body)
    assert argv[:3] == ["torchrun", "--nproc_per_node=4", "-m"]
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "synapse.yaml").write_text((ROOT / "configs" / "synapse.yaml").read_text())
    _fake_downloads(tmp_path)
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        _run_vmunet(
            [
                "vmunet",
                "prepare",
                "synapse",
                "--raw",
                "downloads/Abdomen/RawData",
                "--output",
                "data/synapse",
            ],
            ["--no-count-check"],
        )
    finally:
        os.chdir(cwd)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *argv[2:]]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [*cmd, *TINY_TRAIN], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "runs" / "synapse" / "best.pt").is_file()


def test_deploy_block(demo_folder, monkeypatch):
    # The demo's checkpoint; ct_series/ is a DICOM series written from three of the demo's held-out
    # scans (real MNI152 slices), so that --dicom-seg has a DICOM input.
    import highdicom as hd
    import onnxruntime as ort
    from inference._dicom_fixtures import write_dicom_series

    from vmunet.data import read_image
    from vmunet.models import build_model_from_checkpoint

    monkeypatch.chdir(demo_folder)
    scans = sorted((demo_folder / "demo_output" / "test_scans").glob("*.nii.gz"))[:3]
    volume = np.stack([read_image(p).array for p in scans], axis=-1)
    series = write_dicom_series(demo_folder / "ct_series", volume, (1.0, 1.0, 2.0), modality="MR")
    commands = _commands(BLOCKS["deploy"].body)
    assert [c[:2] for c in commands] == [["vmunet", "export"]] * 2 + [["vmunet", "segment"]]
    for argv in commands:
        _run_vmunet(argv, ["--no-progress"] if argv[1] == "segment" else [])

    # ONNX Runtime reproduces the checkpoint's PyTorch logits on a real scan
    ckpt = demo_folder / "demo_output" / "run" / "best.pt"
    model, _ = build_model_from_checkpoint(ckpt)
    onnx_file = str(demo_folder / "deploy" / "model.onnx")
    sess = ort.InferenceSession(onnx_file, providers=["CPUExecutionProvider"])
    assert all(isinstance(s, str) for s in sess.get_inputs()[0].shape[2:])  # dynamic spatial axes
    slices = np.moveaxis(volume[:, :, :2], 2, 0)[:, None]  # two whole 96 x 96 slices as a batch
    x = torch.from_numpy(np.ascontiguousarray(slices, dtype=np.float32))
    with torch.no_grad():
        want = model(x).numpy()
    got = sess.run(None, {"image": x.numpy()})[0]
    assert np.abs(got - want).max() <= 1e-4 * max(1.0, float(np.abs(want).max()))

    bundle = demo_folder / "deploy" / "bundle"
    for rel in ("configs/metadata.json", "configs/inference.json", "models/model.pt", "docs/README.md"):
        assert (bundle / rel).is_file(), rel

    seg = hd.seg.segread(demo_folder / "masks_dicom" / "ct_series_seg.dcm")
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["grey_matter", "white_matter"]
    mask = read_image(demo_folder / "masks_dicom" / "ct_series.nii.gz").array
    px = seg.get_pixels_by_source_instance(series.sop_instance_uids, combine_segments=True)
    # read_image sorts the (shuffled) files by position: for this axial series slice k is instance k
    np.testing.assert_array_equal(px, np.moveaxis(mask, 2, 0).transpose(0, 2, 1))
