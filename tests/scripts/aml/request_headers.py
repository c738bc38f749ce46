def init():
    pass


def run(data, request_headers):
    wanted = ("Content-Type", "X-Custom", "X-Request-Id")
    return {"data": data, "headers": {k: request_headers.get(k) for k in wanted}}
