"""Parameter-efficient methods behind one contract, so the trainer, saver and decoder treat them alike.

Each method variant is one ``Method`` object (``nlg.methods.registry``): ``get_method(name)`` finds it,
``register(method)`` adds one. This package imports nothing heavy, so ``nlg.config`` can read the names.
"""
from __future__ import annotations

from nlg.methods.registry import BUILTIN_NAMES, HYPER_PARAMS, Method, get_method, method_for, names, register, unregister

__all__ = ["BUILTIN_NAMES", "HYPER_PARAMS", "Method", "get_method", "method_for", "names", "register", "unregister"]
