#!/usr/bin/env python3
"""Checks the converted NanoDet model against the reference numbers in the setup notes.

Owns: running models/nanodet.onnx with ONNX Runtime (Python) on the demo photos with the
pre-processing and GFL decode the notes describe (stretch to 416x416 with PIL bilinear,
BGR, mean/std, score threshold 0.35, class-wise NMS at IoU 0.5), and comparing the
detections with REFERENCE. Exit 0 when they agree, 1 on a mismatch, 2 when it cannot run.
Does not own: the daemon's decoder (src/), the conversion (convert.py).

When numpy, onnxruntime or Pillow are not importable it makes a venv under
deps/venv-nanodet-check (onnxruntime from the wheel setup.sh keeps in deps/wheels) and
re-runs itself there.

    python3 scripts/nanodet/check.py [--model models/nanodet.onnx] [--photos models/demo]
"""
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VENV = os.path.join(ROOT, "deps", "venv-nanodet-check")
PINS = ["onnxruntime==1.31.1", "pillow==11.3.0"]

# Reference run in SETUP-NOTES.md (tf2onnx conversion, stretch resize): every detection
# at or above SCORE_THRESHOLD after class-wise NMS.
REFERENCE = {
    "astronaut.png": [("person", 0.73)],
    "camera.png": [("person", 0.88), ("car", 0.36)],
    "coffee.png": [("cup", 0.52)],
    "chelsea.png": [("person", 0.59), ("cat", 0.40), ("dog", 0.40)],
    "motorcycle_left.png": [("motorcycle", 0.78)],
    "rocket.jpg": [],
}
TOLERANCE = 0.02
SCORE_THRESHOLD = 0.35
NMS_IOU = 0.5
SIZE = 416
STRIDES = (8, 16, 32)
REG_MAX = 10
MEAN_BGR = (103.53, 116.28, 123.675)
STD_BGR = (57.375, 57.12, 58.395)


def ensure_deps():
    try:
        import numpy  # noqa: F401
        import onnxruntime  # noqa: F401
        import PIL  # noqa: F401
        return
    except ImportError:
        pass
    py = os.path.join(VENV, "bin", "python")
    if os.environ.get("NANODET_CHECK_IN_VENV") == "1":
        sys.exit(f"check.py: {py} still lacks numpy/onnxruntime/Pillow; remove {VENV} and re-run")
    if not os.path.exists(py):
        print(f"check.py: creating {VENV} ({', '.join(PINS)})", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", VENV], check=True)
    # --find-links: the onnxruntime wheel setup.sh already downloaded is used, not fetched again.
    subprocess.run([py, "-m", "pip", "install", "-q", "--find-links", os.path.join(ROOT, "deps", "wheels")] + PINS,
                   check=True, stdout=sys.stderr)
    env = dict(os.environ, NANODET_CHECK_IN_VENV="1")
    os.execve(py, [py, os.path.abspath(__file__)] + sys.argv[1:], env)


def labels(path):
    with open(path, encoding="utf-8") as f:
        names = [line.strip() for line in f if line.strip()]
    if len(names) != 80:
        sys.exit(f"check.py: {path} has {len(names)} labels, expected 80")
    return names


def prepare(path):
    import numpy as np
    from PIL import Image

    img = Image.open(path).convert("RGB")
    w, h = img.size
    px = np.asarray(img.resize((SIZE, SIZE), Image.BILINEAR), dtype=np.float32)[:, :, ::-1]  # RGB -> BGR
    x = (px - np.array(MEAN_BGR, np.float32)) / np.array(STD_BGR, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None]), w, h


def decode(outputs, num_classes):
    """GFL decode as in the setup notes; boxes in 416x416 input pixels."""
    import numpy as np

    by_shape = {tuple(o.shape): o for o in outputs}
    boxes, scores, classes = [], [], []
    for s in STRIDES:
        g = SIZE // s
        n = g * g
        cls = by_shape.get((1, n, num_classes))
        reg = by_shape.get((1, n, 4 * (REG_MAX + 1)))
        if cls is None or reg is None:
            sys.exit(f"check.py: no outputs of shape [1,{n},{num_classes}] and [1,{n},{4 * (REG_MAX + 1)}] "
                     f"(have {sorted(by_shape)})")
        cls, reg = cls[0], reg[0].reshape(n, 4, REG_MAX + 1)
        i = np.arange(n)
        cx, cy = (i % g + 0.5) * s, (i // g + 0.5) * s
        e = np.exp(reg - reg.max(axis=2, keepdims=True))
        p = e / e.sum(axis=2, keepdims=True)
        dist = (p * np.arange(REG_MAX + 1)).sum(axis=2) * s  # [n, 4]: left, top, right, bottom
        boxes.append(np.stack([cx - dist[:, 0], cy - dist[:, 1], cx + dist[:, 2], cy + dist[:, 3]], axis=1))
        scores.append(cls.max(axis=1))
        classes.append(cls.argmax(axis=1))
    return np.concatenate(boxes), np.concatenate(scores), np.concatenate(classes)


def iou(a, b):
    import numpy as np

    x1, y1 = np.maximum(a[0], b[:, 0]), np.maximum(a[1], b[:, 1])
    x2, y2 = np.minimum(a[2], b[:, 2]), np.minimum(a[3], b[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = lambda r: np.clip(r[..., 2] - r[..., 0], 0, None) * np.clip(r[..., 3] - r[..., 1], 0, None)
    return inter / np.maximum(area(a) + area(b) - inter, 1e-9)


def nms_classwise(boxes, scores, classes, threshold, iou_max):
    import numpy as np

    keep = []
    idx = np.where(scores >= threshold)[0]
    for c in np.unique(classes[idx]):
        cand = idx[classes[idx] == c]
        cand = cand[np.argsort(-scores[cand], kind="stable")]
        while cand.size:
            best, cand = cand[0], cand[1:]
            keep.append(best)
            cand = cand[iou(boxes[best], boxes[cand]) <= iou_max]
    return sorted(keep, key=lambda k: -scores[k])


def compare(found, expected):
    """Mismatch messages. Each reference detection needs one of its class within TOLERANCE;
    an extra one is a mismatch unless it is within TOLERANCE of the threshold (an edge case
    the reference run may have dropped by a hair)."""
    problems, left = [], list(found)
    for label, score in expected:
        match = [d for d in left if d[0] == label and abs(d[1] - score) <= TOLERANCE]
        if not match:
            near = [f"{d[1]:.3f}" for d in found if d[0] == label]
            problems.append(f"expected {label} {score:.2f}, found {', '.join(near) or 'none'}")
        else:
            left.remove(min(match, key=lambda d: abs(d[1] - score)))
    for label, score, _box in left:
        if score >= SCORE_THRESHOLD + TOLERANCE:
            problems.append(f"unexpected {label} {score:.3f}")
    return problems


def main():
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=os.path.join(ROOT, "models", "nanodet.onnx"))
    ap.add_argument("--labels", default=os.path.join(ROOT, "models", "coco80.txt"))
    ap.add_argument("--photos", default=os.path.join(ROOT, "models", "demo"))
    args = ap.parse_args()
    ensure_deps()
    import onnxruntime as ort

    names = labels(args.labels)
    if not os.path.exists(args.model):
        print(f"check.py: {args.model} is missing (run scripts/setup.sh)", file=sys.stderr)
        return 2
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(args.model, opts, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    if list(inp.shape) != [1, 3, SIZE, SIZE]:
        print(f"check.py: model input {inp.name} is {inp.shape}, expected [1, 3, {SIZE}, {SIZE}]", file=sys.stderr)
        return 1
    failed, run_ms = 0, []
    for photo, expected in REFERENCE.items():
        path = os.path.join(args.photos, photo)
        if not os.path.exists(path):
            print(f"check.py: {path} is missing (run scripts/setup.sh)", file=sys.stderr)
            return 2
        x, w, h = prepare(path)
        t0 = time.perf_counter()
        outputs = sess.run(None, {inp.name: x})
        run_ms.append((time.perf_counter() - t0) * 1000)
        boxes, scores, classes = decode(outputs, len(names))
        found = []
        for k in nms_classwise(boxes, scores, classes, SCORE_THRESHOLD, NMS_IOU):
            b = boxes[k] * [w / SIZE, h / SIZE, w / SIZE, h / SIZE]
            b = [float(min(max(v, 0), lim)) for v, lim in zip(b, (w, h, w, h))]
            found.append((names[classes[k]], float(scores[k]), b))
        problems = compare(found, expected)
        failed += bool(problems)
        shown = ", ".join(f"{l} {s:.3f} [{b[0]:.0f},{b[1]:.0f},{b[2]:.0f},{b[3]:.0f}]" for l, s, b in found)
        print(f"{'ok  ' if not problems else 'FAIL'} {photo}: {shown or 'nothing'}")
        for p in problems:
            print(f"       {p}")
    print(f"check.py: {len(REFERENCE) - failed}/{len(REFERENCE)} photos match the reference "
          f"(tolerance {TOLERANCE}); session.run median {sorted(run_ms)[len(run_ms) // 2]:.0f} ms")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
