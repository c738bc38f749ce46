"""run() that prints, as many Azure ML scripts do for their logs."""


def init():
    print("init says hello")


def run(data):
    print("scoring", data)
    return {"printed": True, "data": data}
