"""The Azure ML wing: the entry-script contract (score.py, AMLRequest/AMLResponse, swagger, module names)."""
