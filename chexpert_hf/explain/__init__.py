"""The interpretability stage: saliency maps (``maps``), their localization scores against boxes
(``localization``), and the ``explain`` command (``run``)."""
