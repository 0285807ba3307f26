"""The parts of the model that `models.py` puts together: backbones (each network's feature map
and its own pooling), heads (feature map -> logits), PU-MLC's LGConv and SSGRL head."""
