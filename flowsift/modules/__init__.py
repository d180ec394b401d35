"""The module API, the chain runner and the built-in modules.

A module is a plain class with hook methods (on_open, on_data, on_gap, on_close, on_packet),
declared as data (name, writes, options, and the state it keeps: CrossFlow, Global); see
flowsift.modules.base, docs/modules.md and docs/state.md.
"""
from flowsift.modules.base import HOOKS, Flow, Module, ModuleError, Option
from flowsift.modules.loader import find, parse_chain
from flowsift.modules.state import CrossFlow, Global

__all__ = ["Module", "Option", "Flow", "ModuleError", "HOOKS", "find", "parse_chain", "CrossFlow", "Global"]
