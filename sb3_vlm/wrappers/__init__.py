from sb3_vlm.wrappers.advice import TeacherView, VLMAdviceWrapper, default_teacher_view

__all__ = ["TeacherView", "VLMAdviceWrapper", "default_teacher_view"]
