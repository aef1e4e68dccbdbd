"""CheXpert AUROC as an ``evaluate`` metric: ``evaluate.load(str(chexpert_hf.evaluation.metrics.EVALUATE_MODULE))``.

A thin wrapper: the computation is ``chexpert_hf.evaluation.metrics`` (``evaluation_targets`` then ``score``),
imported from
the installed package. The ``evaluate`` loader copies this script into its modules cache and scans its import lines
for dependencies, so every import below stays a plain one-line statement.
"""

import datasets
import evaluate
import numpy as np

from chexpert_hf.evaluation.metrics import evaluation_targets, flat_metrics, score
from chexpert_hf.labels import CHEXPERT_LABELS, COMPETITION_LABELS

_DESCRIPTION = """\
Per-label AUROC and AUPRC for CheXpert's multi-label chest X-ray classification, the headline mean AUROC over the
five competition labels (Atelectasis, Cardiomegaly, Consolidation, Edema, Pleural Effusion) and the mean over every
label that could be scored. References are raw CheXpert labels: 1 positive, 0 negative, -1 uncertain (left out of
that label's score) and NaN for a blank (scored as negative). A label whose references hold one class only is
listed in `skipped_labels` and counts in neither mean. With `study_ids` the images are aggregated to studies first:
a study's probability is the maximum over its images, as in the CheXpert paper.
"""

_CITATION = """\
@inproceedings{irvin2019chexpert,
  title     = {CheXpert: A Large Chest Radiograph Dataset with Uncertainty Labels and Expert Comparison},
  author    = {Irvin, Jeremy and Rajpurkar, Pranav and Ko, Michael and Yu, Yifan and Ciurea-Ilcus, Silviana and
               Chute, Chris and Marklund, Henrik and Haghgoo, Behzad and Ball, Robyn and Shpanskaya, Katie and
               Seekins, Jayne and Mong, David A. and Halabi, Safwan S. and Sandberg, Jesse K. and Jones, Ricky and
               Larson, David B. and Langlotz, Curtis P. and Patel, Bhavik N. and Lungren, Matthew P. and Ng, Andrew Y.},
  booktitle = {Proceedings of the AAAI Conference on Artificial Intelligence},
  volume    = {33},
  pages     = {590--597},
  year      = {2019},
  doi       = {10.1609/aaai.v33i01.3301590}
}
"""

_INPUTS_DESCRIPTION = """\
Args:
    predictions: per image, one probability per label (a list of L floats in [0, 1]; logits give the same numbers,
        the metrics being rank-based). Stored as float32.
    references: per image, the raw CheXpert labels in the same column order: 1, 0, -1 or NaN (None also reads as a
        blank). Stored as float32; NaN survives the Arrow round trip.
    label_names: the L CheXpert label names of the columns. Defaults to the five competition labels when L == 5
        and to the 14 CheXpert labels (train.csv order) when L == 14; required otherwise.
    study_ids: one study id per image, in the order the images were added (over every add_batch call); when
        given, images are aggregated to studies (maximum probability) before scoring.
    flat: return the flat dict the Trainer logs (`mean_auroc`, `auroc_<label>`, ...) instead of the nested one.
Returns:
    {"mean_auroc", "mean_auroc_all", "n_images" or "n_studies", "per_label": {label: {"auroc", "auprc",
    "positives", "negatives"}}, "skipped_labels"}; see chexpert_hf.evaluation.metrics.score.
Example:
    >>> metric = evaluate.load(str(EVALUATE_MODULE))
    >>> metric.compute(predictions=[[0.9, 0.2, 0.4, 0.1, 0.7], [0.1, 0.8, 0.3, 0.6, 0.2]],
    ...                references=[[1, 0, -1, float("nan"), 1], [0, 1, 1, 1, 0]])["mean_auroc"]
    1.0
"""

_DEFAULT_LABELS = {len(COMPETITION_LABELS): COMPETITION_LABELS, len(CHEXPERT_LABELS): CHEXPERT_LABELS}


class ChexpertAuroc(evaluate.Metric):
    """CheXpert per-label AUROC/AUPRC and mean AUROC, computed by ``chexpert_hf.evaluation.metrics.score``."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_INPUTS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("float32")),
                    "references": datasets.Sequence(datasets.Value("float32")),
                }
            ),
            reference_urls=["https://stanfordmlgroup.github.io/competitions/chexpert/"],
        )

    def _compute(self, predictions, references, label_names=None, study_ids=None, flat=False):
        probabilities = np.asarray(predictions, dtype=np.float64)
        raw = np.asarray(references, dtype=np.float64)  # None (an Arrow null) becomes NaN here
        if label_names is None:
            width = probabilities.shape[-1] if probabilities.ndim == 2 else None
            if width not in _DEFAULT_LABELS:
                raise ValueError(f"label_names is required for predictions of shape {probabilities.shape}")
            label_names = _DEFAULT_LABELS[width]
        scores = score(probabilities, evaluation_targets(raw), label_names, study_ids=study_ids)
        return flat_metrics(scores) if flat else scores
