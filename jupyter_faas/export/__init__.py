"""Exporting notebook functions to Knative, OpenFaaS and AWS Lambda, as readable code that runs without jupyter-faas."""
