"""Photo -> faces -> model -> pasted photo; batches, animation and the ONNX runtime path."""

from facexpr.pipeline.editor import EditResult, Editor, FaceEdit
from facexpr.pipeline.targets import AUTarget, EmotionTarget, ReferenceTarget, Target

__all__ = ["Editor", "EditResult", "FaceEdit", "EmotionTarget", "AUTarget", "ReferenceTarget", "Target"]
