def init():
    pass


def run(data):
    raise RuntimeError("secret internal detail that must not leak")
