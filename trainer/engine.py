"""Kept only for `automl/search/driver.py` (`automl.export=auto`); the code is in `trainer.deploy.tensorrt`."""

from trainer.deploy.tensorrt import tensorrt_status  # noqa: F401
