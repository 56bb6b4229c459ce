from sb3_vlm.wrappers.advice import TeacherView, VLMAdviceWrapper, default_teacher_view
from sb3_vlm.wrappers.vec_advice import VecVLMAdviceWrapper, default_vec_teacher_view

__all__ = ["TeacherView", "VLMAdviceWrapper", "VecVLMAdviceWrapper", "default_teacher_view", "default_vec_teacher_view"]
