"""Deployment of a trained network: ONNX export, TensorRT engines, and predictors that run them.

- `onnx`: `export_onnx(spec)` writes `model.onnx` + its sidecar and validates it against PyTorch.
- `tensorrt`: `build_engine(spec)` turns that file into a TensorRT engine (+ sidecar); `tensorrt` is optional.
- `sidecar`: the JSON file beside every exported file, and the evaluate/inference spec derived from it.
- `predictors`: the `Predictor` contract and its backends over exported files (ONNX Runtime, TensorRT).
"""
