"""Checkpoints on disk: reading (hub or folder -> config + state; no model class), writing
(``save_pretrained``), upstream's Lightning ``.ckpt`` files, and random weights in the
published layout."""
