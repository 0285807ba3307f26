"""Training, whatever the mode: the loop, one phase into a run folder, checkpoints.

    engine.py      train one epoch, score a split, the epoch loop with early stopping
    trainer.py     one phase into one run folder: optimiser, resume, interruption, results
    checkpoint.py  what last.pt / best.pt hold, and the RNG states a resumed epoch needs
"""
