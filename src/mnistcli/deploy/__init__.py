"""Using a trained model: predict from a checkpoint or an exported file, export to TorchScript and ONNX."""
