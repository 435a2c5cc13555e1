"""Downgrade rules: data files and the pure matcher."""

from .rules import Rule, RuleSet, RulesError, builtin_rules, load_rule_set

__all__ = ["Rule", "RuleSet", "RulesError", "builtin_rules", "load_rule_set"]
