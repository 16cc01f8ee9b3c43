"""musicnn's TensorFlow checkpoints: convert them to safetensors, compute reference outputs.

Runs in its own environment with tensorflow-cpu, librosa and the PyPI package `musicnn`
(see `make musicnn-weights` / `make musicnn-parity`); it never imports torch or deramos.

    python scripts/musicnn_tf.py convert   --out src/deramos/musicnn_weights
    python scripts/musicnn_tf.py reference --out DIR CLIP.wav ...
    python scripts/musicnn_tf.py features CORPUS ...      # musicnn's VGG models, for attribute_probe.py

The reference follows musicnn's own extractor: librosa's mel spectrogram of the clip at
16 kHz, cast to float16, log10(1 + 10000 * mel), cut into 187-frame patches; the frozen
inference graph of the checkpoint (`model/Sigmoid` and what it needs) gives the outputs. Past
musicnn's last full patch, the remaining frames are zero-padded to one more patch (musicnn
drops them; the port keeps them), so the padding is checked too.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

MODELS = ("MTT_musicnn", "MSD_musicnn")
PATCH_FRAMES = 187
# Tensors of the inference graph the port is checked on.
OUTPUTS = {
    "taggram": "model/Sigmoid:0",
    "penultimate": "model/batch_normalization_10/batchnorm/add_1:0",
    "pooled": "model/concat_2:0",
}
FRONT_END = {  # TF layer -> port module: the five front-end blocks
    "conv2d": "timbral_74", "conv2d_1": "timbral_77",
    "conv2d_2": "temporal_128", "conv2d_3": "temporal_64", "conv2d_4": "temporal_32",
}
MID_END = {"conv2d_5": "mid1", "conv2d_6": "mid2", "conv2d_7": "mid3"}
BATCH_NORMS = {
    "batch_normalization": "input_bn",
    **{f"batch_normalization_{i}": f"{name}.bn" for i, name in enumerate(
        list(FRONT_END.values()) + list(MID_END.values()), start=1)},
    "batch_normalization_9": "pool_bn", "batch_normalization_10": "dense_bn",
}


def checkpoint_dir(model: str) -> Path:
    import musicnn

    return Path(musicnn.__file__).parent / model


def read_checkpoint(model: str) -> dict[str, np.ndarray]:
    from tensorflow.python.training import py_checkpoint_reader

    # The prefix is the folder itself: its `checkpoint` file names the author's own path.
    reader = py_checkpoint_reader.NewCheckpointReader(str(checkpoint_dir(model)) + "/")
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()
            if "Adam" not in name and "power" not in name}


def torch_layout(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """TF names and layouts -> the port's state dict (deramos/model/musicnn.py)."""
    out = {}
    for tf_name, ours in FRONT_END.items():        # [kh, kw, in, out] -> [out, in, kh, kw]
        out[f"{ours}.conv.weight"] = tensors[f"{tf_name}/kernel"].transpose(3, 2, 0, 1)
        out[f"{ours}.conv.bias"] = tensors[f"{tf_name}/bias"]
    for tf_name, ours in MID_END.items():          # [7, in, 1, out] -> Conv1d [out, in, 7]
        out[f"{ours}.conv.weight"] = tensors[f"{tf_name}/kernel"][:, :, 0, :].transpose(2, 1, 0)
        out[f"{ours}.conv.bias"] = tensors[f"{tf_name}/bias"]
    for tf_name, ours in BATCH_NORMS.items():
        out[f"{ours}.weight"] = tensors[f"{tf_name}/gamma"]
        out[f"{ours}.bias"] = tensors[f"{tf_name}/beta"]
        out[f"{ours}.running_mean"] = tensors[f"{tf_name}/moving_mean"]
        out[f"{ours}.running_var"] = tensors[f"{tf_name}/moving_variance"]
    for tf_name, ours in (("dense", "dense"), ("dense_1", "output")):
        out[f"{ours}.weight"] = tensors[f"{tf_name}/kernel"].T
        out[f"{ours}.bias"] = tensors[f"{tf_name}/bias"]
    unused = set(tensors) - {f"{t}/{p}" for t in list(FRONT_END) + list(MID_END) + ["dense", "dense_1"]
                             for p in ("kernel", "bias")} - {f"{t}/{p}" for t in BATCH_NORMS
                                                             for p in ("gamma", "beta", "moving_mean", "moving_variance")}
    if unused:
        raise ValueError(f"checkpoint tensors not converted: {sorted(unused)}")
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}


def convert(out_dir: Path) -> None:
    import hashlib

    from safetensors.numpy import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    for model in MODELS:
        state = torch_layout(read_checkpoint(model))
        path = out_dir / f"{model}.safetensors"
        save_file(state, str(path), metadata={"source": f"PyPI musicnn 0.1.0, musicnn/{model}/"})
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        print(f"{path}: {sum(v.size for v in state.values())} parameters, sha256 {digest}")


def frozen_graph(model: str):
    """The checkpoint's inference subgraph with its variables turned into constants."""
    import tensorflow as tf
    from tensorflow.core.protobuf import meta_graph_pb2

    meta = meta_graph_pb2.MetaGraphDef()
    meta.ParseFromString((checkpoint_dir(model) / ".meta").read_bytes())
    for node in meta.graph_def.node:
        node.attr.pop("_output_shapes", None)   # stale shapes stop the whole graph importing
    graph_def = tf.compat.v1.graph_util.extract_sub_graph(meta.graph_def, ["model/Sigmoid"])
    values = read_checkpoint(model)
    for node in graph_def.node:
        if node.op in ("VariableV2", "Variable"):
            value = values[node.name]
            node.op = "Const"
            node.ClearField("attr")
            node.attr["dtype"].type = tf.float32.as_datatype_enum
            node.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(value))
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.import_graph_def(graph_def, name="")
    return graph


def log_mel(path: Path, float16: bool = False) -> np.ndarray:
    """[frames, 96]: musicnn.extractor.batch_data's log-mel, computed in float32.

    With `float16`, exactly musicnn's: the mel rounded to float16 and the log taken in float16,
    where 10000 * mel overflows to inf for mel > 6.55 (loud tonal music), so the taggram
    becomes NaN. The port computes in float32; `*_f16` outputs record the difference."""
    import librosa

    audio, sr = librosa.load(str(path), sr=16000)
    mel = librosa.feature.melspectrogram(y=audio, sr=sr, hop_length=256, n_fft=512, n_mels=96).T
    if float16:
        with np.errstate(over="ignore"):
            return np.log10(10000 * mel.astype(np.float16) + 1)
    return np.log10(10000 * mel.astype(np.float32) + 1)


def patches(rep: np.ndarray) -> np.ndarray:
    """musicnn's full, non-overlapping patches, plus the zero-padded rest as one more patch."""
    full = rep.shape[0] // PATCH_FRAMES
    out = [rep[i * PATCH_FRAMES:(i + 1) * PATCH_FRAMES] for i in range(full)]
    rest = rep[full * PATCH_FRAMES:]
    if len(rest):
        padded = np.zeros((PATCH_FRAMES, rep.shape[1]), dtype=rep.dtype)
        padded[:len(rest)] = rest
        out.append(padded)
    return np.stack(out).astype(np.float32)


def reference(clips: list[Path], out_dir: Path) -> None:
    import tensorflow as tf

    tf.compat.v1.disable_eager_execution()
    out_dir.mkdir(parents=True, exist_ok=True)
    index = []
    for model in MODELS:
        graph = frozen_graph(model)
        with tf.compat.v1.Session(graph=graph) as session:
            for clip in clips:
                result = {}
                for suffix, float16 in (("", False), ("_f16", True)):
                    batch = patches(log_mel(clip, float16))
                    feed = {"model/Placeholder:0": batch, "model/Placeholder_2:0": False}
                    values = session.run(list(OUTPUTS.values()), feed_dict=feed)
                    result.update({name + suffix: value.reshape(len(batch), -1)
                                   for name, value in zip(OUTPUTS, values)})
                name = f"{clip.stem}.{model}.npz"
                np.savez(out_dir / name, **result)
                index.append({"clip": str(clip), "model": model, "file": name, "patches": len(batch)})
                print(f"{clip.name} {model}: {len(batch)} patches")
    (out_dir / "index.json").write_text(json.dumps(index, indent=1))


VGG_MODELS = ("MTT_vgg", "MSD_vgg")
# The VGG graphs' taggram, the flattened input of their dense layer, and each batch norm's output
# (averaged over time and frequency): 50 + 256 + 1 + 5 x 128 numbers per patch.
VGG_OUTPUTS = ["model/Sigmoid:0", "model/Flatten/flatten/Reshape:0"] + [
    f"model/batch_normalization{suffix}/cond/Merge:0" for suffix in ("", "_1", "_2", "_3", "_4", "_5")]


def vgg_features(corpora: list[Path]) -> None:
    """vgg_<model>.npy in each deramos-realmusic corpus: per clip of synth_meta.jsonl, the mean
    over its patches of VGG_OUTPUTS (float32 log-mel, as the port computes it)."""
    import tensorflow as tf

    tf.compat.v1.disable_eager_execution()
    for model in VGG_MODELS:
        with tf.compat.v1.Session(graph=frozen_graph(model)) as session:
            for root in corpora:
                meta = [json.loads(line) for line in (root / "synth_meta.jsonl").read_text().splitlines() if line.strip()]
                rows = []
                for item in meta:
                    batch = patches(log_mel(root / "wav" / item["wav"]))
                    values = session.run(VGG_OUTPUTS, {"model/Placeholder:0": batch, "model/Placeholder_2:0": False})
                    parts = values[:2] + [v.mean(axis=(1, 2)) for v in values[2:]]
                    rows.append(np.concatenate([v.reshape(len(batch), -1) for v in parts], axis=1).mean(axis=0))
                np.save(root / f"vgg_{model}.npy", np.stack(rows))
                print(f"{root}: {model} features of {len(rows)} clips")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    conv = sub.add_parser("convert", help="write <model>.safetensors for MTT_musicnn and MSD_musicnn")
    conv.add_argument("--out", type=Path, required=True)
    ref = sub.add_parser("reference", help="TensorFlow outputs for 16 kHz clips, one .npz per clip and model")
    ref.add_argument("--out", type=Path, required=True)
    ref.add_argument("clips", type=Path, nargs="+")
    feat = sub.add_parser("features", help="clip features of musicnn's VGG models in deramos-realmusic corpora")
    feat.add_argument("corpora", type=Path, nargs="+")
    args = parser.parse_args(argv)
    if args.command == "convert":
        convert(args.out)
    elif args.command == "features":
        vgg_features(args.corpora)
    else:
        reference(args.clips, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
