"""The corpora a model learns and is judged on: the MusicEval layout (`musiceval`), clips read for
training (`clips`), the synthetic corpus (`synth`) and the real-music corpora (`realmusic`).
`musiceval` and `synth` are torch-free (the build stage renders calibration clips with them)."""
