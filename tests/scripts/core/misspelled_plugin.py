from runtime import hookimpl


@hookimpl
def postprocesss(request, outputs):
    return outputs
