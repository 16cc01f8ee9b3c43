"""deramos.serve: the Scorer behind Triton Inference Server; no torch.

    deramos-serve --bundle bundle/                 the Scorer served by PyTriton (HTTP + gRPC)
    deramos-triton-repo bundle/ --out repo/        a native Triton model repository
                                                   (onnxruntime backend, ensemble)
"""
