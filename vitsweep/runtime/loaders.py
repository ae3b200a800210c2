"""The `load.py` an exported runtime artefact ships: the runtime and numpy, nothing else.

A station runs the model without torch or vitsweep, so the loader is written out as plain text
here; it opens the session exactly as `ort.session` / `ov.compile_ir` do (same threads, same
precision hint), and re-measures the stored test accuracy on the shipped `check.npz` at the
trial's evaluation batch size, so the same batches give the same sums.
"""

from __future__ import annotations

_HEAD = '''"""Run this export with {runtime} and numpy only.

    python load.py     re-measures the test accuracy on check.npz; exit 0 when it equals the
                       stored one (metrics.json), 1 otherwise
    from load import load; predict = load(); logits = predict(images)  # float32 (B, C, H, W)
"""

import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
META = json.loads((HERE / "runtime.json").read_text())
'''

_ORT = '''

def load(threads=META["threads"]):
    """images (float32, B x C x H x W) -> logits, on ONNX Runtime's CPU provider."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(
        str(HERE / "model.onnx"), options, providers=["CPUExecutionProvider"]
    )
    return lambda images: session.run(None, {"images": np.ascontiguousarray(images, np.float32)})[0]
'''

_OV = '''

def load(threads=META["threads"]):
    """images (float32, B x C x H x W) -> logits, on OpenVINO's CPU plugin."""
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(
        core.read_model(str(HERE / "model.xml")),
        "CPU",
        {
            "INFERENCE_PRECISION_HINT": META["inference_precision"],
            "INFERENCE_NUM_THREADS": threads,
            "NUM_STREAMS": 1,
        },
    )
    request = compiled.create_infer_request()

    def predict(images):
        request.infer({0: np.ascontiguousarray(images, np.float32)}, share_inputs=True)
        return request.get_output_tensor(0).data.copy()

    return predict
'''

_TAIL = '''

def test_accuracy(predict, batch_size=META["eval_batch_size"]):
    """Top-1 on check.npz (the trial's test split), in the trial's evaluation batches."""
    check = np.load(HERE / "check.npz")
    images, labels = check["images"], check["labels"]
    correct = 0
    for start in range(0, len(images), batch_size):
        logits = predict(images[start : start + batch_size])
        correct += int((logits.argmax(1) == labels[start : start + batch_size]).sum())
    return correct / len(images)


if __name__ == "__main__":
    measured = test_accuracy(load())
    stored = json.loads((HERE / "metrics.json").read_text())["test_accuracy"]
    print(f"test_accuracy: stored {{stored}}, re-measured {{measured}}", file=sys.stderr)
    print(json.dumps({{"test_accuracy": measured}}))
    raise SystemExit(0 if measured == stored else 1)
'''


def load_py(runtime: str) -> str:
    """The text of `load.py` for an artefact of `runtime` (onnxruntime or openvino)."""
    body = {"onnxruntime": _ORT, "openvino": _OV}[runtime]
    return _HEAD.format(runtime=runtime) + body + _TAIL.format()
