def init():
    pass


def run(data):
    return data


def postprocess(request, outputs, extra_argument):
    return outputs
