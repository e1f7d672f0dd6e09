"""Deployment: ONNX export of a model package and a torch-free ONNX Runtime backend that predicts as the engines do."""
