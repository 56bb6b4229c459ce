from sb3_vlm.guidance.distill import (
    advised_action_nll,
    capped_rows,
    continuous_agreement,
    kl_distill_loss,
    masked_mean,
    teacher_agreement,
    teacher_targets,
)
from sb3_vlm.guidance.schedules import (
    CoefSchedule,
    ConstantCoef,
    KickstartingCoef,
    LinearDecayCoef,
    as_coef_schedule,
)
from sb3_vlm.guidance.trust import TrustEstimator, TrustSettings

__all__ = [
    "CoefSchedule",
    "ConstantCoef",
    "KickstartingCoef",
    "LinearDecayCoef",
    "TrustEstimator",
    "TrustSettings",
    "advised_action_nll",
    "as_coef_schedule",
    "capped_rows",
    "continuous_agreement",
    "kl_distill_loss",
    "masked_mean",
    "teacher_agreement",
    "teacher_targets",
]
