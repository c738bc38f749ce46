def init(model_path):
    pass


def run(data):
    return data
