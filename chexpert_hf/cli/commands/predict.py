"""``chexpert-hf predict``: per-label probabilities for image files."""

from __future__ import annotations

import argparse
from pathlib import Path

from chexpert_hf.cli.commands._common import OneSpelling, add_model_options, docs


def add_parser(commands) -> argparse.ArgumentParser:
    parser = commands.add_parser(
        "predict",
        help="Print per-label probabilities (sigmoid) for image files.",
        formatter_class=OneSpelling,
        description="Run a trained model on image files (JPEG, PNG including 16-bit, grayscale, RGB, RGBA ...), "
        "with the model's own image processor after decoding each file to 8-bit grey, and print one row of "
        "independent per-label probabilities per image. Only safetensors weights are loaded." + docs("evaluation"),
    )
    parser.add_argument("--model", required=True, help="a trained output folder or a Hub model id")
    parser.add_argument("images", nargs="+", type=Path, metavar="IMAGE", help="image files")
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help="also write the table as CSV (Path + one column per label), the format "
        "`chexpert-hf evaluate --predictions` reads",
    )
    add_model_options(parser, batch_size=32)
    parser.set_defaults(handler=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from chexpert_hf.evaluation.evaluate import predictions_frame, write_predictions_csv
    from chexpert_hf.evaluation.inference import load_classifier, predict_files
    from chexpert_hf.evaluation.thresholds import saved_thresholds

    loaded = load_classifier(args.model, trust_remote_code=args.trust_remote_code, device=args.device)
    probabilities = predict_files(loaded, args.images, batch_size=args.batch_size)
    frame = predictions_frame([str(path) for path in args.images], probabilities, loaded.labels)
    if args.output:
        write_predictions_csv(args.output, frame)
    thresholds, source = saved_thresholds(loaded.model.config)
    print(predictions_text(frame, thresholds))
    print(decision_note(thresholds, source))
    if args.output:
        print(f"wrote {args.output}")
    return 0


def predictions_text(frame, thresholds: dict[str, float] | None = None) -> str:
    """Per-image probabilities as an aligned table (labels across, images down); with ``thresholds`` each
    probability is followed by the decision at its label's threshold: ``+`` (at or above) or ``-``."""
    thresholds = thresholds or {}
    labels = list(frame.columns[1:])
    widths = [max(6, len(label)) + (2 if label in thresholds else 0) for label in labels]
    width = max(12, *(len(str(path)) for path in frame["Path"]))
    lines = ["image".ljust(width) + "".join(f"  {label:>{w}}" for label, w in zip(labels, widths, strict=True))]
    for row in frame.itertuples(index=False):
        cells = []
        for label, w, value in zip(labels, widths, row[1:], strict=True):
            mark = (" +" if value >= thresholds[label] else " -") if label in thresholds else ""
            cells.append(f"  {f'{value:.3f}{mark}':>{w}}")
        lines.append(str(row[0]).ljust(width) + "".join(cells))
    return "\n".join(lines)


def decision_note(thresholds: dict[str, float], source: dict) -> str:
    """The line under the table that says what the decisions are, or that the model has no thresholds."""
    if not thresholds:
        return (
            "probabilities only: this model has no saved decision thresholds "
            "(`chexpert-hf evaluate --model M --data_dir D --set-thresholds youden` chooses them)"
        )
    where = f", chosen on {source['split']}" if source.get("split") else ""
    studies = " studies (a study's score: the maximum over its images)" if source.get("level") == "study" else ""
    return (
        f"+ / -: at or above / below the label's decision threshold saved with the model (rule "
        f"{source.get('rule', 'unknown')}{where}{studies}); labels without a threshold show the probability only"
    )
