"""What the graphs are: presets (`config`), the mel front-end, the audio encoders (MuQ-compatible
Conformer, the musicnn port and its tempo/tonality branch), the text encoder, the MI/TA heads,
the whole network (`network.DeRAMOS`) and its checkpoints. Imports torch; imports nothing of the
project but the runtime's contract and paths. Kept empty so `deramos.model.config` is light."""
