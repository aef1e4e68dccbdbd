"""The AUROC benchmark grid: families × strategies × seeds, planned (``plan``), run and resumed (``launch``),
summarised (``results``); ``grid.benchmark`` does it all."""
