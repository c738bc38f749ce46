def init():
    pass


def run(data):
    return data


def preproces(request):
    return request
