"""Several of the scripts beside this one behind one server: each request runs the run() of one of them.

MODES_SCRIPTS names them (comma-separated, read at import); the file at MODES_FILE names the one that
answers, and the test writes it before its requests. tests/test_azureml_conformance.py serves one
azmlinfsrv and one runtime on this file for a whole family of scripts instead of a pair per script.

The scripts are imported here, at import, as the server imports an entry script: @rawhttp is a switch
for the whole server (azmlinfsrv and the runtime both read it once the entry script is imported), so
one family is either all @rawhttp or all plain run(data). When a member's run() takes request_headers,
so does this run(): both servers then pass the headers, and each member gets them only if it asks.
"""

import importlib.util
import inspect
import os
from pathlib import Path

_HERE = Path(__file__).resolve().parent
_SCRIPTS = {}
for _name in os.environ["MODES_SCRIPTS"].split(","):
    _spec = importlib.util.spec_from_file_location(f"modes_{_name}", _HERE / f"{_name}.py")
    _SCRIPTS[_name] = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_SCRIPTS[_name])
_WANT_HEADERS = {
    name: "request_headers" in inspect.signature(script.run).parameters for name, script in _SCRIPTS.items()
}


def init():
    for script in _SCRIPTS.values():
        script.init()


def _run(data, request_headers):
    name = Path(os.environ["MODES_FILE"]).read_text()
    if _WANT_HEADERS[name]:
        return _SCRIPTS[name].run(data, request_headers=request_headers)
    return _SCRIPTS[name].run(data)


if any(_WANT_HEADERS.values()):

    def run(data, request_headers):
        return _run(data, request_headers)

else:

    def run(data):
        return _run(data, None)
