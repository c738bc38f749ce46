"""Several of the scripts beside this one behind one server: each request runs the run() of one of them.

MODES_SCRIPTS names them (comma-separated, read at import); the file at MODES_FILE names the one that
answers, and the test writes it before its requests. tests/test_azureml_conformance.py serves one
azmlinfsrv and one runtime on this file for a whole family of scripts instead of a pair per script.

The scripts are imported here, at import, as the server imports an entry script: @rawhttp is a switch
for the whole server (azmlinfsrv and the runtime both read it once the entry script is imported), so
one family is either all @rawhttp or all plain run(data).
"""

import importlib.util
import os
from pathlib import Path

_HERE = Path(__file__).resolve().parent
_SCRIPTS = {}
for _name in os.environ["MODES_SCRIPTS"].split(","):
    _spec = importlib.util.spec_from_file_location(f"modes_{_name}", _HERE / f"{_name}.py")
    _SCRIPTS[_name] = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_SCRIPTS[_name])


def init():
    for script in _SCRIPTS.values():
        script.init()


def run(data):
    return _SCRIPTS[Path(os.environ["MODES_FILE"]).read_text()].run(data)
