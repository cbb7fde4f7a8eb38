"""Upstream's ``toto.scripts`` module paths, for code written against upstream (only loaders so far)."""
