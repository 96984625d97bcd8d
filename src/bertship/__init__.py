"""bertship: ship compressed transformer encoders to ONNX Runtime and OpenVINO, verified and measured."""

__version__ = "0.1.0"
