"""``vmunet export``: a checkpoint as ONNX, TorchScript, pt2 or a MONAI bundle, checked against PyTorch."""

from __future__ import annotations

import argparse

__all__ = ["add_parser", "run"]

EPILOG = """examples:
  vmunet export runs/demo/best.pt --format onnx --output best.onnx
  vmunet export runs/demo/best.pt --format onnx --output best.onnx --opset 20 --input-size 256 256
  vmunet export runs/demo/best.pt --format torchscript --output best.ts
  vmunet export runs/demo/best.pt --format pt2 --output best.pt2
  vmunet export runs/3d/best.pt --format bundle --output bundles/my_model
  python -m monai.bundle run --config_file bundles/my_model/configs/inference.json \\
      --dataset_dir scans/ --output_dir masks/

onnx / torchscript / pt2: the network is rebuilt with the exportable "chunked" scan backend,
exported with a dynamic batch and spatial size (multiples of 32; 3-D: 32 x 32 x 16; pt2: from twice
those up), then run by
ONNX Runtime / torch.jit.load / torch.export.load and held against PyTorch's logits: the export is
refused (exit 2, nothing written) above --tolerance x max(1, max |logit|). The preprocessing spec
goes into the file's metadata and a <output>.json sidecar. Default opset 18 (the exporter's own).
bundle: a MONAI bundle folder whose configs/inference.json segments a folder of scans with the
checkpoint's preprocessing and sliding window, writing the same label maps as vmunet segment.
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from vmunet.export.graph import DEFAULT_OPSET, DEFAULT_TOLERANCE

    p = subparsers.add_parser(
        "export",
        help="export a checkpoint to ONNX, TorchScript, pt2 or a MONAI bundle",
        description="Export a vmunet checkpoint to ONNX / TorchScript / pt2 (checked against PyTorch) "
        "or write it as a MONAI bundle.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("checkpoint", help="a vmunet checkpoint (.pt) written by vmunet train")
    p.add_argument(
        "--format",
        required=True,
        help="onnx, torchscript, pt2 or bundle",
    )
    p.add_argument("--output", required=True, help="the file to write (a folder for --format bundle)")
    p.add_argument("--opset", type=int, default=None, help=f"ONNX opset (default {DEFAULT_OPSET}; onnx only)")
    p.add_argument(
        "--input-size",
        type=int,
        nargs="+",
        default=None,
        metavar="N",
        help="spatial size to export with and check: H W (2-D) or X Y Z (3-D); default: the checkpoint's",
    )
    p.add_argument(
        "--tolerance",
        type=float,
        default=DEFAULT_TOLERANCE,
        help="largest accepted max |exported - PyTorch| / max(1, max |logit|) "
        f"(default {DEFAULT_TOLERANCE:g})",
    )
    p.add_argument(
        "--static", action="store_true", help="export a fixed batch and spatial size instead of dynamic ones"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vmunet.errors import VmunetUserError
    from vmunet.export import FORMATS, export_bundle, export_checkpoint

    fmt = str(args.format).strip().lower()
    if fmt not in FORMATS:
        raise VmunetUserError(f"--format {args.format!r}: expected one of {', '.join(FORMATS)}")
    if fmt == "bundle":
        for flag, value in (("--opset", args.opset), ("--input-size", args.input_size)):
            if value is not None:
                raise VmunetUserError(f"{flag} applies to onnx / torchscript / pt2, not to --format bundle")
        res = export_bundle(args.checkpoint, args.output)
        print(f"vmunet export: MONAI bundle written to {res.path}")
        print(
            f"  run it: python -m monai.bundle run --config_file {res.inference_config} "
            "--dataset_dir SCANS/ --output_dir MASKS/"
        )
        return 0
    res = export_checkpoint(
        args.checkpoint,
        args.output,
        fmt,
        opset=args.opset,
        input_size=args.input_size,
        tolerance=args.tolerance,
        dynamic=not args.static,
    )
    opset = f", opset {res.opset}" if res.opset is not None else ""
    if not res.dynamic:
        sizes = f"static input {list(res.input_shape)}"
    elif res.dynamic_axes == ["batch"]:
        sizes = f"dynamic batch, spatial size {list(res.input_shape[2:])}"
    else:
        sizes = "dynamic batch and spatial size"
    print(f"vmunet export: {res.format} model written to {res.path} ({sizes}{opset})")
    for shape, diff in res.checks:
        print(
            f"  checked on input {list(shape)}: max |diff| / max(1, max |logit|) = {diff:.2e} "
            f"(<= {res.tolerance:g})"
        )
    print(f"  preprocessing spec: {res.sidecar}")
    return 0
