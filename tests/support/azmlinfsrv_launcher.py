"""Run azmlinfsrv bound to 127.0.0.1 (its CLI always binds 0.0.0.0)."""

import sys

import azureml_inference_server_http.amlserver as amlserver

amlserver.DEFAULT_HOST = "127.0.0.1"
sys.argv = ["azmlinfsrv", *sys.argv[1:]]
amlserver.run()
