"""One module per metric (`fm.evaluate.metric.Metric`); the table of them is `fm.evaluate.registry`."""
