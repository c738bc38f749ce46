def init():
    pass


def run(data):
    # Imported inside run(), after loading: the runtime keeps the Azure ML module names available.
    from azureml_inference_server_http.api.aml_response import AMLResponse

    return AMLResponse("lazy", 200)
