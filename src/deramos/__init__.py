"""DeRA-MOS: predict music impression (MI) and text alignment (TA) of text-to-music output.

    deramos            PyTorch model, losses, MusicEval data, training, evaluation
    deramos.export     ONNX graphs (FP32/FP16/INT8) and TensorRT engines -> a bundle
    deramos.calibration INT8 calibration and its accuracy drift
    deramos.runtime    the light scorer (numpy + onnxruntime; no torch)

Importing this package is cheap: nothing here imports torch.
"""
__version__ = "0.1.0"
