"""BlazeFace (the face detector inside MediaPipe's landmarker bundle) run on images of any size.

MediaPipe's FaceDetector shows BlazeFace a 128x128 letterboxed copy of its input, so finding
40 px faces in a 4000 px photo took ~450 overlapping tiles, one call each (~1.4 s on 2 cores).
The network is fully convolutional up to its two heads (a 16x16 map of 2 anchors per cell at
stride 8 and an 8x8 map of 6 anchors at stride 16 for a 128 px input), so here it runs once on a
whole image: the ``.tflite`` model is rewritten as an ONNX graph with free height and width
(weights copied exactly, fp16 -> fp32 as TFLite's own DEQUANTIZE does) and run by onnxruntime,
and every cell of both maps is decoded the way MediaPipe decodes its 896 anchors.

Decoding (MediaPipe's short-range options: ``x_scale = y_scale = w_scale = h_scale = 128``, fixed
anchor size, anchor offset 0.5): a cell (row i, column j) of the stride-s map has its anchor at
``((j + 0.5) s, (i + 0.5) s)`` input pixels and regresses ``dx, dy, w, h`` in input pixels (the
128 px scale cancels), so the box is centred at anchor + (dx, dy). The score is
``sigmoid(clip(logit, -100, 100))``. On a 128 px image this gives MediaPipe's scores (to 1e-6)
and its boxes up to its weighted non-maximum suppression (here: keep the best of boxes
overlapping by IoU > 0.3). The cost grows with the image's area: ~1.5-2.5 ms of one core per
128x128 px, against ~2.5 ms for each MediaPipe call on a 128 px tile.

What one pass finds (measured on 112 CelebA-HQ faces pasted into a textured 640x480 image, face
size = landmark box): score >= 0.6 for 97 % of 16 px faces and 99-100 % from 17 to 120 px;
>= 0.8 for 99 % of 20 px faces and all from 24 to 96 px. A textured background gives 0.4 boxes
>= 0.5, 0.04 >= 0.6, 0.002 >= 0.7 and none >= 0.8 per 128x128 px. :class:`facexpr.face.detect.FaceAnalyzer` uses it on a pyramid
that shows the smallest face sought at 16 px.
"""

from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from facexpr.errors import FacexprError

#: Side (px) of the input the model was trained on; its regressions are in these pixels.
INPUT_SIDE = 128
#: Boxes overlapping a better-scored one by more than this IoU are dropped.
NMS_IOU = 0.3
#: Most threads one image is shared by.
MAX_THREADS = 4
#: Largest block (px a side) of an image one network run sees.
BLOCK = 1024
#: Overlap (px) of neighbouring blocks: a face of 64 px (the biggest a pyramid level is for) and
#: 32 px of context around it lie whole in one of them.
BLOCK_OVERLAP = 96


@dataclass(frozen=True)
class _Head:
    """One detection head: the ONNX output names of its score and box maps and its stride."""

    scores: str
    boxes: str
    stride: int
    anchors: int


# -- a minimal ONNX writer -------------------------------------------------------------------------
# ONNX models are protobuf messages. Importing the ``onnx`` package costs ~1 s (it loads
# ml_dtypes), which a command that edits one photo would pay on every run, so the few messages this
# graph needs are written here, field numbers from onnx.proto (tests read the result back with
# ``onnx`` and check it).

_FLOAT, _UINT8, _INT64 = 1, 2, 7  # TensorProto.DataType
_ATTR_FLOAT, _ATTR_INT, _ATTR_STRING, _ATTR_INTS = 1, 2, 3, 7  # AttributeProto.AttributeType
_NP_TYPES = {np.dtype(np.float32): _FLOAT, np.dtype(np.uint8): _UINT8, np.dtype(np.int64): _INT64}


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # negative int64 values: two's complement, 10 bytes
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _int(field: int, n: int) -> bytes:
    return _varint(field << 3) + _varint(int(n))


def _len(field: int, data: bytes | str) -> bytes:
    raw = data.encode() if isinstance(data, str) else data
    return _varint(field << 3 | 2) + _varint(len(raw)) + raw


def _attribute(name: str, value: int | float | str | list[int]) -> bytes:
    out = _len(1, name)
    if isinstance(value, str):
        return out + _len(4, value) + _int(20, _ATTR_STRING)
    if isinstance(value, float):
        return out + _varint(2 << 3 | 5) + struct.pack("<f", value) + _int(20, _ATTR_FLOAT)
    if isinstance(value, int):
        return out + _int(3, value) + _int(20, _ATTR_INT)
    return out + b"".join(_int(8, v) for v in value) + _int(20, _ATTR_INTS)


def _node(op_type: str, inputs: list[str], outputs: list[str], **attrs: int | float | str | list[int]) -> bytes:
    return (b"".join(_len(1, i) for i in inputs) + b"".join(_len(2, o) for o in outputs) + _len(3, outputs[0])
            + _len(4, op_type) + b"".join(_len(5, _attribute(k, v)) for k, v in attrs.items()))


def _tensor(name: str, arr: np.ndarray) -> bytes:
    arr = np.ascontiguousarray(arr)
    return (b"".join(_int(1, d) for d in arr.shape) + _int(2, _NP_TYPES[arr.dtype]) + _len(8, name)
            + _len(9, arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()))


def _value_info(name: str, elem_type: int, dims: list[int | str]) -> bytes:
    shape = b"".join(_len(1, _len(2, d) if isinstance(d, str) else _int(1, d)) for d in dims)
    return _len(1, name) + _len(2, _len(1, _int(1, elem_type) + _len(2, shape)))


def _model(nodes: list[bytes], weights: list[bytes], inputs: list[bytes], outputs: list[bytes]) -> bytes:
    graph = (b"".join(_len(1, n) for n in nodes) + _len(2, "blazeface") + b"".join(_len(5, w) for w in weights)
             + b"".join(_len(11, i) for i in inputs) + b"".join(_len(12, o) for o in outputs))
    # IR version 8 with opset 13: read by every onnxruntime the project supports.
    return _int(1, 8) + _len(2, "facexpr") + _len(7, graph) + _len(8, _len(1, "") + _int(2, 13))


def tflite_to_onnx(tflite: bytes) -> tuple[bytes, list[_Head]]:
    """Rewrite BlazeFace's ``.tflite`` as an ONNX graph with free height and width whose outputs
    are the heads' maps before TFLite's reshapes (NCHW: ``anchors`` score channels and
    ``anchors x 16`` regression channels per cell). Its input ``rgb`` is a uint8 1xHxWx3 image:
    the graph itself makes MediaPipe's NCHW ``x / 127.5 - 1`` of it (cheaper than numpy).

    Only the operators BlazeFace uses are known (convolutions, depthwise convolutions, ADD, RELU,
    PAD, MAX_POOL_2D, DEQUANTIZE; the final RESHAPE and CONCATENATION are what the heads are
    read before); anything else raises :class:`FacexprError`.
    """
    from mediapipe.tasks.metadata import schema_py_generated as tfl

    try:
        model = tfl.Model.GetRootAs(tflite, 0)
        n_graphs = model.SubgraphsLength()
    except Exception as exc:  # flatbuffers raises whatever a bad offset leads to
        raise FacexprError(f"the face detector model is not a readable TFLite file ({exc})") from exc
    if n_graphs != 1:
        raise FacexprError("the face detector model has an unexpected layout (several subgraphs)")
    op_names = {v: k for k, v in vars(tfl.BuiltinOperator).items() if not k.startswith("_")}
    codes = [op_names.get(max(model.OperatorCodes(i).BuiltinCode(), model.OperatorCodes(i).DeprecatedBuiltinCode()))
             for i in range(model.OperatorCodesLength())]
    graph = model.Subgraphs(0)
    dtypes = {tfl.TensorType.FLOAT16: np.float16, tfl.TensorType.FLOAT32: np.float32, tfl.TensorType.INT32: np.int32,
              tfl.TensorType.INT64: np.int64}

    def name(t: int) -> str:
        return graph.Tensors(t).Name().decode()

    def shape(t: int) -> list[int]:
        return [int(v) for v in graph.Tensors(t).ShapeAsNumpy()]

    values: dict[str, np.ndarray] = {}

    def value(t: int) -> np.ndarray:
        if name(t) in values:
            return values[name(t)]
        tensor = graph.Tensors(t)
        data = model.Buffers(tensor.Buffer()).DataAsNumpy()
        if isinstance(data, int) or tensor.Type() not in dtypes:
            raise FacexprError(f"the face detector model's tensor {name(t)!r} holds no constant data")
        return np.frombuffer(data.tobytes(), dtypes[tensor.Type()]).reshape(shape(t))

    def options(op: Any, cls: Any) -> Any:
        table = op.BuiltinOptions()
        opts = cls()
        opts.Init(table.Bytes, table.Pos)
        return opts

    first = name(int(graph.InputsAsNumpy()[0]))
    weights: list[bytes] = [_tensor("rgb/scale", np.array(1.0 / 127.5, np.float32)),
                            _tensor("rgb/one", np.array(1.0, np.float32))]
    nodes: list[bytes] = [
        _node("Transpose", ["rgb"], ["rgb/uint8"], perm=[0, 3, 1, 2]),  # on bytes: 3x cheaper than on floats
        _node("Cast", ["rgb/uint8"], ["rgb/nchw"], to=_FLOAT),
        _node("Mul", ["rgb/nchw", "rgb/scale"], ["rgb/scaled"]),
        _node("Sub", ["rgb/scaled", "rgb/one"], [first]),
    ]
    activations = {tfl.ActivationFunctionType.NONE: None, tfl.ActivationFunctionType.RELU: "Relu"}

    def const(key: str, arr: np.ndarray) -> str:
        weights.append(_tensor(key, arr))
        return key

    def emit(op_type: str, inputs: list[str], out: str, fused: int = tfl.ActivationFunctionType.NONE,
             **attrs: int | float | str | list[int]) -> None:
        if fused not in activations:
            raise FacexprError(f"the face detector model uses an unsupported activation ({fused})")
        act = activations[fused]
        nodes.append(_node(op_type, inputs, [out if act is None else out + "/pre"], **attrs))
        if act is not None:
            nodes.append(_node(act, [out + "/pre"], [out]))

    def padding(code: int) -> str:
        return "SAME_UPPER" if code == tfl.Padding.SAME else "VALID"

    concat_inputs: dict[str, list[str]] = {}
    reshape_input: dict[str, str] = {}
    for k in range(graph.OperatorsLength()):
        op = graph.Operators(k)
        kind = codes[op.OpcodeIndex()]
        ins = [int(t) for t in op.InputsAsNumpy()]
        out = name(int(op.OutputsAsNumpy()[0]))
        if kind == "DEQUANTIZE":
            values[out] = value(ins[0]).astype(np.float32)
        elif kind in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            opts = options(op, tfl.Conv2DOptions if kind == "CONV_2D" else tfl.DepthwiseConv2DOptions)
            w = value(ins[1]).astype(np.float32)
            # TFLite: conv [out, kh, kw, in], depthwise [1, kh, kw, out]; ONNX: [out, in/group, kh, kw].
            w = w.transpose(0, 3, 1, 2) if kind == "CONV_2D" else w.transpose(3, 0, 1, 2)
            group = 1 if kind == "CONV_2D" else w.shape[0]
            inputs = [name(ins[0]), const(out + "/w", w)]
            if len(ins) > 2 and ins[2] >= 0:
                inputs.append(const(out + "/b", value(ins[2]).astype(np.float32)))
            emit("Conv", inputs, out, opts.FusedActivationFunction(), kernel_shape=list(w.shape[2:]),
                 strides=[opts.StrideH(), opts.StrideW()],
                 dilations=[opts.DilationHFactor() or 1, opts.DilationWFactor() or 1],
                 auto_pad=padding(opts.Padding()), group=int(group))
        elif kind == "ADD":
            emit("Add", [name(ins[0]), name(ins[1])], out, options(op, tfl.AddOptions).FusedActivationFunction())
        elif kind == "RELU":
            emit("Relu", [name(ins[0])], out)
        elif kind == "PAD":
            pads = value(ins[1]).astype(np.int64)[[0, 3, 1, 2]]  # NHWC (4, 2) -> NCHW order
            channels = shape(ins[0])[3]
            if not pads[[0, 2, 3]].any():
                # Zero channels added to a residual: an identity 1x1 convolution into the wider
                # tensor. onnxruntime runs convolutions in its blocked layout and fuses the ADD
                # and RELU after them; a Pad leaves that layout (and back) on the biggest maps:
                # 11 % less time for the whole network.
                eye = np.zeros((channels + int(pads[1].sum()), channels, 1, 1), np.float32)
                eye[np.arange(channels) + int(pads[1, 0]), np.arange(channels), 0, 0] = 1.0
                emit("Conv", [name(ins[0]), const(out + "/eye", eye)], out, kernel_shape=[1, 1])
            else:
                emit("Pad", [name(ins[0]), const(out + "/pads", np.concatenate([pads[:, 0], pads[:, 1]]))], out)
        elif kind == "MAX_POOL_2D":
            opts = options(op, tfl.Pool2DOptions)
            emit("MaxPool", [name(ins[0])], out, opts.FusedActivationFunction(),
                 kernel_shape=[opts.FilterHeight(), opts.FilterWidth()], strides=[opts.StrideH(), opts.StrideW()],
                 auto_pad=padding(opts.Padding()))
        elif kind == "RESHAPE":
            reshape_input[out] = name(ins[0])
        elif kind == "CONCATENATION":
            concat_inputs[out] = [name(t) for t in ins]
        else:
            raise FacexprError(f"the face detector model uses an operator this reader does not know ({kind})")

    # The model's two outputs are concatenations (boxes, scores) of reshaped head maps, small
    # anchors first; the maps before the reshapes are the graph's outputs here.
    side = shape(int(graph.InputsAsNumpy()[0]))
    if len(side) != 4 or side[1] != INPUT_SIDE or side[2] != INPUT_SIDE:
        raise FacexprError(f"the face detector model expects a {side} input, not {INPUT_SIDE}x{INPUT_SIDE}")
    outputs = [name(int(t)) for t in graph.OutputsAsNumpy()]
    tensor_shapes = {name(t): shape(t) for t in range(graph.TensorsLength())}
    maps: dict[str, list[tuple[str, list[int]]]] = {}
    for out in outputs:
        parts = [reshape_input.get(t) for t in concat_inputs.get(out, [])]
        if not parts or None in parts:
            raise FacexprError(f"the face detector model's output {out!r} is not a concatenation of reshaped maps")
        maps[out] = [(m, tensor_shapes[m]) for m in parts if m is not None]
    score_out = [o for o in outputs if tensor_shapes[o][-1] == 1]
    box_out = [o for o in outputs if tensor_shapes[o][-1] == 16]
    if len(score_out) != 1 or len(box_out) != 1 or len(maps[score_out[0]]) != len(maps[box_out[0]]):
        raise FacexprError("the face detector model's outputs are not one score and one box tensor")
    heads: list[_Head] = []
    for (s_name, s_shape), (b_name, b_shape) in zip(maps[score_out[0]], maps[box_out[0]]):
        if s_shape[1:3] != b_shape[1:3] or b_shape[3] != 16 * s_shape[3]:
            raise FacexprError("the face detector model's score and box maps do not match")
        heads.append(_Head(s_name, b_name, INPUT_SIDE // s_shape[1], s_shape[3]))

    onnx_model = _model(nodes, weights, [_value_info("rgb", _UINT8, [1, "height", "width", 3])],
                        [_value_info(t, _FLOAT, [1, "c", "h", "w"]) for h in heads for t in (h.scores, h.boxes)])
    return onnx_model, heads


class BlazeFace:
    """BlazeFace on a whole image of any size (at least 16 px a side): boxes and scores.

    A big image is cut into overlapping blocks (at most :data:`BLOCK` px a side, overlapping by
    :data:`BLOCK_OVERLAP`, on the network's 16 px grid, so each block sees what the whole-image
    pass would away from its cut edges): one run over the 4500 px level of a 100 MP photo held
    ~3.5 GB of activations (its analysis took 22 s), a block holds ~0.1 GB (4 s in all). The
    blocks are shared by ``threads`` threads (default: the cores, at most :data:`MAX_THREADS`),
    each running onnxruntime on one core; an image smaller than a block is still cut in as many
    pieces as there are threads when its long side is 384 px or more, so both cores work on a
    1024 px photo's pyramid. A thread that finishes takes the next block, so a core
    that another program keeps busy slows the image down less than onnxruntime's own threads,
    which split every layer evenly and wait for the slowest (measured with one core busy: 0.47 s
    with two of them against 0.34 s with one).
    """

    def __init__(self, tflite: bytes, threads: int | None = None) -> None:
        import onnxruntime as ort

        graph, self._heads = tflite_to_onnx(tflite)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.threads = max(int(threads or min(os.cpu_count() or 1, MAX_THREADS)), 1)
        self._session = ort.InferenceSession(graph, opts, providers=["CPUExecutionProvider"])
        self._outputs = [t for h in self._heads for t in (h.scores, h.boxes)]

    def detect(self, rgb: np.ndarray, min_score: float) -> list[tuple[np.ndarray, float]]:
        """``(box, score)`` of every face scored at least ``min_score`` in ``rgb`` (uint8 HxWx3),
        best first; ``box`` = x0, y0, x1, y1 in ``rgb``'s pixels (0 = its left edge). Boxes
        overlapping a better one by IoU > 0.3 are dropped."""
        h, w = rgb.shape[:2]
        if min(h, w) < 16:
            return []
        min_logit = float(np.log(min_score / (1.0 - min_score))) if 0.0 < min_score < 1.0 else -100.0
        blocks = _blocks(h, w, self.threads)
        if len(blocks) == 1 or self.threads == 1:
            found = [self._detect_block(rgb, b, min_logit) for b in blocks]
        else:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(min(self.threads, len(blocks))) as pool:
                found = list(pool.map(lambda b: self._detect_block(rgb, b, min_logit), blocks))
        boxes = [f[0] for f in found if len(f[0])]
        if not boxes:
            return []
        return _suppress(np.concatenate(boxes), np.concatenate([f[1] for f in found if len(f[0])]))

    def _detect_block(self, rgb: np.ndarray, block: tuple[int, int, int, int],
                      min_logit: float) -> tuple[np.ndarray, np.ndarray]:
        """Boxes (``rgb``'s pixels) and scores of every cell of ``rgb[y0:y1, x0:x1]`` scored
        ``min_logit`` or more."""
        x0, y0, x1, y1 = block
        maps = self._session.run(self._outputs, {"rgb": np.ascontiguousarray(rgb[y0:y1, x0:x1])[None]})
        boxes: list[np.ndarray] = []
        scores: list[np.ndarray] = []
        for head, logits, reg in zip(self._heads, maps[0::2], maps[1::2]):
            logits = logits[0]  # (anchors, rows, cols)
            a, i, j = np.nonzero(logits >= min_logit)
            if not len(a):
                continue
            r = reg[0].reshape(head.anchors, 16, *logits.shape[1:])[a, :4, i, j]  # (n, 4): dx dy w h
            cx = x0 + (j + 0.5) * head.stride + r[:, 0]
            cy = y0 + (i + 0.5) * head.stride + r[:, 1]
            boxes.append(np.stack([cx - r[:, 2] / 2, cy - r[:, 3] / 2, cx + r[:, 2] / 2, cy + r[:, 3] / 2], axis=1))
            scores.append(1.0 / (1.0 + np.exp(-np.clip(logits[a, i, j], -100.0, 100.0))))
        if not boxes:
            return np.zeros((0, 4)), np.zeros(0)
        return np.concatenate(boxes).astype(np.float64), np.concatenate(scores).astype(np.float64)


def _blocks(h: int, w: int, threads: int) -> list[tuple[int, int, int, int]]:
    """``(x0, y0, x1, y1)`` blocks covering an ``h`` x ``w`` image: at most BLOCK px a side
    (plus the 16 px grid's rounding), overlapping by BLOCK_OVERLAP, starting on the 16 px grid;
    at least ``threads`` of them when the image's long side has room for that many overlaps."""
    def count(side: int) -> int:
        return max(1, math.ceil((side - BLOCK_OVERLAP) / (BLOCK - BLOCK_OVERLAP)))

    nx, ny = count(w), count(h)
    if nx * ny < threads and max(h, w) >= 4 * BLOCK_OVERLAP:
        if w >= h:
            nx = max(nx, math.ceil(threads / ny))
        else:
            ny = max(ny, math.ceil(threads / nx))

    def spans(side: int, n: int) -> list[tuple[int, int]]:
        if n == 1:
            return [(0, side)]
        length = math.ceil((side + (n - 1) * BLOCK_OVERLAP) / n)  # blocks of about equal size
        step = max((length - BLOCK_OVERLAP) // 16 * 16, 16)  # starts on the 16 px grid
        return [(k * step, side if k == n - 1 else k * step + step + BLOCK_OVERLAP) for k in range(n)]

    return [(x0, y0, x1, y1) for y0, y1 in spans(h, ny) for x0, x1 in spans(w, nx)]


def _suppress(boxes: np.ndarray, scores: np.ndarray) -> list[tuple[np.ndarray, float]]:
    """Greedy non-maximum suppression: best first, dropping boxes with IoU > NMS_IOU to a kept one."""
    order = np.argsort(-scores, kind="stable")
    areas = np.maximum(boxes[:, 2] - boxes[:, 0], 0) * np.maximum(boxes[:, 3] - boxes[:, 1], 0)
    kept: list[int] = []
    while len(order):
        k = int(order[0])
        kept.append(k)
        rest = order[1:]
        ix = np.maximum(0.0, np.minimum(boxes[k, 2], boxes[rest, 2]) - np.maximum(boxes[k, 0], boxes[rest, 0]))
        iy = np.maximum(0.0, np.minimum(boxes[k, 3], boxes[rest, 3]) - np.maximum(boxes[k, 1], boxes[rest, 1]))
        inter = ix * iy
        union = areas[k] + areas[rest] - inter
        iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
        order = rest[iou <= NMS_IOU]
    return [(boxes[k], float(scores[k])) for k in kept]
