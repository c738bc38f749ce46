"""Imported from the app root (AML_APP_ROOT on sys.path, as azmlinfsrv puts it)."""


def name():
    return "shared"
