"""Turning corpora into a model and judging it: losses, the training and pre-training loops and
their schedule, the cached frozen features, evaluation, the real-music report and the ablation.
Imports model/, data/ and the runtime's metrics; nothing imports it but the CLIs' entry points."""
