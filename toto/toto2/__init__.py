"""Toto 2.0 (``Datadog/Toto-2.0-*``): configuration, model, loading and block decoding."""
