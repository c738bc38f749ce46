"""An entry script below its source directory (AZUREML_SOURCE_DIRECTORY=code) in an app root (AML_APP_ROOT)."""

import source_dir_helpers
from approot_shared.util import name


def init():
    pass


def run(data):
    return {"app_root": name(), "source_dir": source_dir_helpers.name()}
