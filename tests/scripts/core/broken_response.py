"""run() returns a response-like object that fails when the runtime reads it: an error outside the script."""


class Broken:
    status_code = 200
    headers: dict[str, str] = {}

    def get_data(self):
        raise RuntimeError("cannot read me")


def init():
    pass


def run(data):
    return Broken()
