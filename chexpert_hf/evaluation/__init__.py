"""The scoring stage: AUROC and its intervals (``metrics``), model inference, ``evaluate``/``predict``
(``evaluate``), and the files an evaluation leaves (``reports``)."""
