from sb3_vlm.wrappers.advice import TeacherView, VLMAdviceWrapper, default_teacher_view
from sb3_vlm.wrappers.selection import (
    AllOf,
    EveryK,
    Familiar,
    Novelty,
    Paced,
    QueryBatch,
    QuerySelector,
    Uncertainty,
)
from sb3_vlm.wrappers.vec_advice import VecVLMAdviceWrapper, current_advice_of, default_vec_teacher_view

__all__ = [
    "AllOf",
    "EveryK",
    "Familiar",
    "Novelty",
    "Paced",
    "QueryBatch",
    "QuerySelector",
    "TeacherView",
    "Uncertainty",
    "VLMAdviceWrapper",
    "VecVLMAdviceWrapper",
    "current_advice_of",
    "default_teacher_view",
    "default_vec_teacher_view",
]
