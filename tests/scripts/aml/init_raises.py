def init():
    raise ValueError("model file missing")


def run(data):
    return data
