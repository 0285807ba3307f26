"""The single-positive methods: every loss `losses.py` registers.

    base.py   the references' numerics (neg_log, entropy, per-code matrix), `SPMLLoss`, EM's loss
    cole.py   Cole et al. 2021's losses: AN, AN-LS, WAN, IU, PR, EPR (and the full-label oracles)
    role.py   ROLE (Cole et al. 2021): a learned label matrix
    apl.py    EM + APL (Zhou et al. 2022): soft pseudo-negatives between epochs
    vlpl/     VLPL (Xing et al. 2024): frozen-CLIP pseudo-labels, the open_clip towers, the score cache
    large_loss.py  LL-R / LL-Ct / LL-Cp (Kim et al. 2022): large unknown losses rejected or corrected
    gr.py     GR loss (Chen et al. 2024): epoch-scheduled soft pseudo-labels and weights
    aevlp/    AEVLP (Tran et al. 2025): the GPR loss on DAMP's multi-crop CLIP pseudo-labels
    robust.py Hill, SPLC (Zhang et al. 2021), focal, ASL: robust losses with unknowns as negatives

Each module imports only `base` (and `config`, `errors`, the data layer); none
imports `losses.py`, which registers them all.
"""
