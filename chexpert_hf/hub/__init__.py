"""The publishing stage: model cards (``model_card``) and pushing checkpoints and datasets to the Hub (``push``)."""
