"""Every PromQL expression the project ships (rules and dashboard), and the metric names an expression reads.

Prometheus 2.42 has no parse endpoint (``/api/v1/parse_query`` came later), so the names are found
lexically: strings, label matchers, grouping clauses and ranges are removed, and what remains that
looks like an identifier and is neither a function call nor a PromQL keyword is a metric name.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "include" / "monitoring" / "rules" / "lifecycle.rules.yml"
DASHBOARDS = ROOT / "include" / "monitoring" / "grafana" / "dashboards"

KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset",
    "and", "or", "unless", "inf", "nan", "atan2",
}  # fmt: skip
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_RANGE = re.compile(r"\[[^\]]*\]")
_IDENTIFIER = re.compile(r"(?<![\w:.])([A-Za-z_:][\w:]*)(\s*\()?")
# Grafana's variables, replaced as Grafana would before the query reaches Prometheus.
_GRAFANA_INTERVALS = ("$__rate_interval", "$__interval", "$__range")


def metric_names(expr: str) -> set[str]:
    """The metric names ``expr`` selects (function names, keywords and label names excluded)."""
    text = _STRING.sub('""', expr)
    text = _MATCHERS.sub("", text)
    text = _GROUPING.sub("", text)
    text = _RANGE.sub("", text)
    return {
        match[1]
        for match in _IDENTIFIER.finditer(text)
        if not match[2] and match[1].lower() not in KEYWORDS and not re.fullmatch(r"\d+[smhdwy]", match[1])
    }


def rule_expressions(path: Path = RULES) -> dict[str, str]:
    """``group/record-or-alert name`` -> expression, for every rule of the rules file."""
    found: dict[str, str] = {}
    for group in yaml.safe_load(path.read_text())["groups"]:
        for rule in group["rules"]:
            found[f"{group['name']}/{rule.get('record') or rule.get('alert')}"] = rule["expr"]
    return found


def dashboards() -> dict[str, dict[str, Any]]:
    return {path.name: json.loads(path.read_text()) for path in sorted(DASHBOARDS.glob("*.json"))}


def dashboard_expressions(dashboard: dict[str, Any], model: str, interval: str = "1m") -> dict[str, str]:
    """``panel title/refId`` -> expression, with the template variables substituted."""
    found: dict[str, str] = {}
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"].replace("$model", model).replace("${model}", model)
            for variable in _GRAFANA_INTERVALS:
                expr = expr.replace(variable, interval)
            assert "$" not in expr, f"unsubstituted variable in {panel['title']!r}: {expr}"
            found[f"{panel['title']}/{target['refId']}"] = expr
    return found


def variable_metric_names(dashboard: dict[str, Any]) -> set[str]:
    """The metrics the template variables' ``label_values(metric, label)`` queries read."""
    names: set[str] = set()
    for variable in dashboard["templating"]["list"]:
        query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
        match = re.fullmatch(r"label_values\((.+),\s*\w+\)", query)
        assert match, f"variable {variable['name']!r}: expected label_values(metric, label), got {query!r}"
        names |= metric_names(match[1])
    return names
