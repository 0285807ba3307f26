"""AEVLP (Tran et al., ICCV 2025): the GPR loss on DAMP's multi-crop CLIP pseudo-labels.

    gpr.py         the GPR loss (GR on unknowns, weighted pseudo-positives, expected-positive regulariser)
    damp.py        the crops, their flips and the pseudo-label rule, run per step from cached CLIP cosines
    text_graph.py  the frozen random graph network that perturbs the class text embeddings

The CLIP cosines of the crops are computed once and cached by methods/vlpl/scores.py.
"""
from methods.aevlp.gpr import GPRLoss, loss_gpr  # noqa: F401
