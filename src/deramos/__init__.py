"""DeRA-MOS: predict music impression (MI) and text alignment (TA) of text-to-music output.

One subpackage per stage (docs/architecture.md; tests/test_architecture.py says which may import which):

    deramos.model        what the graphs are: presets, front-end, encoders, heads, checkpoints (torch)
    deramos.data         MusicEval layout, training clips, synthetic and real-music corpora
    deramos.training     losses, training and pre-training, evaluation, real-music report, ablation (torch)
    deramos.export       a trained model -> the FP32 ONNX bundle, checked against PyTorch (torch)
    deramos.calibration  calibration and held-out clip sets, INT8 quantisation, drift against FP32
    deramos.build        the torch-free build stage: FP16, INT8, TensorRT engines, each compared with FP32
    deramos.runtime      the light scorer and the contract (numpy + onnxruntime; no torch), deramos-run
    deramos.scale        batch scoring on a Ray cluster (deramos-run --ray)
    deramos.serve        the scorer behind Triton (deramos-serve, deramos-triton-repo)
    deramos.bench        benchmarks: speed, the reward loop, memory, Ray and Triton costs
    deramos.extras       the torch commands' entry points (one line, not a traceback, without torch)

Importing this package is cheap: nothing here imports anything.
"""
__version__ = "0.1.0"
