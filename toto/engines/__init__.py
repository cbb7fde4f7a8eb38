"""Engines that run the pipeline elsewhere: :mod:`.ray` (extra ``toto-compiled[ray]``)."""
