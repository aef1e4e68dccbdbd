"""The AUROC benchmark grid: families × strategies × seeds, run, resumed and summarised (``grid``)."""
