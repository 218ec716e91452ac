from train.helpers import trained_run  # noqa: F401  (session fixture)
