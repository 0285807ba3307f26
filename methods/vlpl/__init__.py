"""VLPL (Xing et al. 2024): pseudo-labels from a frozen CLIP, and the losses trained on them.

    loss.py    the pseudo-label rule and the EM_PL / EM_PL_ASL losses
    towers.py  open_clip models built offline (the frozen scorer, the clip_vision backbone)
    scores.py  the train images' CLIP cosines, computed once and cached on disk
"""
from methods.vlpl.loss import VLPLLoss, loss_em_pl, loss_em_pl_asl, pseudo_labels, vlpl_defaults  # noqa: F401
