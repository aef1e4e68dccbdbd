"""``chexpert-hf explain``: heatmaps of where a model looks, and a check that they point at the findings."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from chexpert_hf.cli.commands._common import OneSpelling, add_model_options, docs


def add_parser(commands) -> argparse.ArgumentParser:
    parser = commands.add_parser(
        "explain",
        help="Draw attention-relevance, Grad-CAM(++) or rollout heatmaps and check that they point at the findings.",
        formatter_class=OneSpelling,
        description="Heatmaps of where a model looks, one per image and label (each map targets that label's "
        "logit). Writes OUTPUT/<image-stem>__<label>.png (the radiograph with the heatmap on top, label and "
        "probability in the corner), OUTPUT/<image-stem>__sheet.png (all requested labels side by side) and "
        "OUTPUT/heatmaps.npz (the maps keyed <image-stem>/<Label>, float16 in [0, 1], at most --map_size px); "
        "several methods write one folder each. With --lesions (the synthetic data's lesions.csv) it also plays "
        "the pointing game (does the map's maximum fall in the finding's box?) against a uniform-random map, and "
        "re-runs the maps on the model with re-initialised weights (a map that does not change does not depend "
        "on what the model learned), and writes OUTPUT/localization.json." + docs("explain"),
    )
    parser.add_argument(
        "--model",
        required=True,
        action="extend",
        nargs="+",
        help="a trained output folder or a Hub model id; several (the seeds of one recipe, a benchmark's runs): "
        "each explained into OUTPUT/<name>/, and the scores as mean ± std over them in OUTPUT/localization.json",
    )
    parser.add_argument(
        "--images",
        nargs="+",
        type=Path,
        metavar="IMG",
        default=None,
        help="image files to explain (unreadable ones are skipped and named)",
    )
    parser.add_argument(
        "--data_dir",
        "--data",
        "--data-dir",
        help="or: a prepared dataset folder (chexpert-hf prepare) or a CheXpert root",
    )
    parser.add_argument(
        "--split",
        choices=("train", "validation", "test"),
        default="validation",
        help="with --data_dir: the split to take images from (default: validation)",
    )
    parser.add_argument(
        "--num_images",
        "--num-images",
        type=int,
        default=16,
        help="with --data_dir: the first N images of the split (default: 16; 0: all)",
    )
    parser.add_argument(
        "--views",
        choices=("frontal", "all"),
        default="frontal",
        help="with --data_dir: which views (default: frontal, the views lesion boxes are drawn on)",
    )
    parser.add_argument(
        "--prepare_image_size",
        "--prepare-image-size",
        type=int,
        default=None,
        help="when --data_dir is a CheXpert root: the size it is prepared at (default: the model's "
        "recipe.yaml, else 320)",
    )
    parser.add_argument(
        "--labels",
        default=None,
        help="comma-separated labels to explain, e.g. 'Cardiomegaly,Pleural Effusion' (default: all "
        "the model's labels)",
    )
    parser.add_argument(
        "--top_k", "--top-k", type=int, default=None, help="instead: each image's K most probable labels"
    )
    parser.add_argument(
        "--method",
        default=None,
        help="gradcam, gradcam++, or for ViT, DeiT and the hybrid attention_rollout or attention_relevance "
        "(gradient-weighted attention, Chefer et al. 2021), or several separated by commas (default: "
        "attention_relevance where it applies, which measured best, else gradcam; gradcam with --target_layer)",
    )
    parser.add_argument(
        "--target_layer",
        "--target-layer",
        default=None,
        help="the layer Grad-CAM reads; only the hybrid has a choice: tokens (default) or cnn",
    )
    parser.add_argument(
        "--lesions",
        type=Path,
        default=None,
        help="lesions.csv (path,label,x0,y0,x1,y1): score the maps with the pointing game and the "
        "model-randomization check",
    )
    parser.add_argument(
        "--tolerance",
        type=float,
        default=15.0,
        help="pointing-game tolerance in pixels of the original image (default: 15)",
    )
    parser.add_argument(
        "--sanity_check",
        "--sanity-check",
        action="store_true",
        help="run the model-randomization check even without --lesions",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the randomized model's weights (default: 0)")
    parser.add_argument(
        "--output", type=Path, required=True, help="folder to write (it must not exist, unless --overwrite)"
    )
    parser.add_argument(
        "--map_size",
        "--map-size",
        type=int,
        default=512,
        help="heatmaps.npz stores float16 maps at most this many pixels on the long side (default: 512)",
    )
    parser.add_argument(
        "--overlays",
        choices=("all", "sheets", "none"),
        default="all",
        help="pictures to draw: each label's overlay and each image's sheet (all, the default), the sheets only "
        "(about half the disk), or none (heatmaps.npz and the scores only)",
    )
    parser.add_argument(
        "--full_size",
        "--full-size",
        action="store_true",
        help="store the maps at each image's own size instead (a 2,320 x 2,828 px radiograph: 13 MB per map, float16)",
    )
    parser.add_argument(
        "--road_images",
        "--road-images",
        type=int,
        default=0,
        help="score each method's faithfulness (ROAD, most and least relevant first, from pytorch-grad-cam) on "
        "the first N explained images (default: 0, off; it costs about 0.1 s per image, label and method at 32 "
        "px on a CPU, 3-4 s at 224 px)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it exists")
    add_model_options(parser, batch_size=8)
    parser.set_defaults(handler=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from chexpert_hf.evaluation.inference import load_classifier
    from chexpert_hf.explain.localization import localization_text, read_lesions
    from chexpert_hf.explain.maps import METHODS, default_method, model_family
    from chexpert_hf.explain.run import check_output, explain, read_image_files, read_split

    if (args.images is None) == (args.data_dir is None):
        raise ValueError(
            "give either --images IMG [IMG ...] or --data_dir PREPARED_DIR (with --split and --num_images)"
        )
    methods = [name.strip() for name in (args.method or "").split(",") if name.strip()]
    unknown = [name for name in methods if name not in METHODS]
    if unknown or (args.method is not None and not methods):
        raise ValueError(f"unknown method(s) {unknown or args.method!r}; methods: {', '.join(METHODS)}")
    labels = [name.strip() for name in args.labels.split(",") if name.strip()] if args.labels else None
    if args.batch_size < 1:
        raise ValueError(f"--batch_size must be at least 1, got {args.batch_size}")
    # what the output folder must not hold (the model folder, the data): checked before the model loads
    keep = [
        path
        for path in (*args.model, args.data_dir, args.lesions, *(args.images or ()))
        if path and Path(path).exists()
    ]
    check_output(args.output, args.overwrite, keep)
    lesions = read_lesions(args.lesions) if args.lesions else None

    def load(model: str):
        return load_classifier(model, trust_remote_code=args.trust_remote_code, device=args.device)

    loaded = load(args.model[0])
    if not methods:  # a target layer is a CAM method's; otherwise the one that measured best for the family
        methods = ["gradcam" if args.target_layer else default_method(model_family(loaded.model))]
    if args.images is not None:
        radiographs, skipped = read_image_files(args.images)
        for message in skipped:
            print(f"skipped unreadable image {message}", file=sys.stderr)
        if skipped:
            print(f"skipped {len(skipped)} of {len(args.images)} images (unreadable)", file=sys.stderr)
        if not radiographs:
            raise ValueError("none of the images could be read")
    else:
        from chexpert_hf.evaluation.evaluate import recipe_settings

        trained = recipe_settings(args.model[0])
        radiographs = read_split(
            args.data_dir,
            loaded.labels,
            split=args.split,
            num_images=args.num_images,
            views=args.views,
            prepare_image_size=args.prepare_image_size or trained.get("prepare_image_size", 320),
        )
    options = dict(
        methods=methods,
        labels=labels,
        top_k=args.top_k,
        layer=args.target_layer,
        lesions=lesions,
        tolerance=args.tolerance,
        sanity_check=args.sanity_check,
        batch_size=args.batch_size,
        seed=args.seed,
        map_size=None if args.full_size else args.map_size,
        road_images=args.road_images,
        overlays=args.overlays,
    )
    if len(args.model) > 1:
        labels = loaded.labels
        del loaded  # each model is loaded in turn: one in memory at a time
        return _explain_several(args, load, labels, radiographs, keep, options)
    result = explain(loaded, radiographs, args.output, overwrite=args.overwrite, keep=keep, **options)
    if result.localization is not None:
        print(localization_text(result.localization))
    for note in result.notes:
        print(f"note: {note}")
    print(f"wrote {result.maps} maps of {result.images} images to {result.output}")
    return 0


def _explain_several(args: argparse.Namespace, load, labels: list[str], radiographs, keep, options: dict) -> int:
    from chexpert_hf.explain.localization import across_models_text
    from chexpert_hf.explain.run import explain_models

    def checked(model: str):
        loaded = load(model)
        if loaded.labels != labels:
            raise ValueError(f"{model} scores {loaded.labels}, the first model {labels}: give models of one label set")
        return loaded

    summary, results = explain_models(
        checked, args.model, radiographs, args.output, overwrite=args.overwrite, keep=keep, **options
    )
    if summary is not None:
        print(across_models_text(summary))
    maps = sum(result.maps for result in results)
    print(f"wrote {maps} maps of {results[0].images} images for {len(results)} models to {results[0].output.parent}")
    return 0
