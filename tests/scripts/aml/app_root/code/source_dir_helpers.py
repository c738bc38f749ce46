"""Imported by its bare name from AZUREML_SOURCE_DIRECTORY (on sys.path, as azmlinfsrv puts it)."""


def name():
    return "helpers"
