"""The names of the files a command leaves in its output folder, in one place."""

METRICS_JSON = "metrics.json"  # the scores of an evaluation (chexpert_hf.evaluation.reports)
METRICS_MD = "metrics.md"  # the same as a Markdown table
ROC_PNG = "roc.png"  # ROC curves of the competition labels
RUN_INFO = "run_info.json"  # what a training run cost; written last by chexpert_hf.training.train, read by the
                            # benchmark
