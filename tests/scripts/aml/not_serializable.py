def init():
    pass


def run(data):
    return {"values": {1, 2, 3}}
