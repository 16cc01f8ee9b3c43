"""The torch-free build stage: an FP32 bundle -> FP16 and INT8 graphs (and TensorRT engines),
each checked against FP32 through the runtime's own backends (`deramos-build`)."""
