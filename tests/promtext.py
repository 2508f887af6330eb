"""A strict parser of the Prometheus text exposition format (0.0.4), for tests: every line is
a HELP, a TYPE or a sample of a family whose TYPE came first; label values are quoted with the
format's escapes; values are floats. Anything else raises ValueError."""

from __future__ import annotations

import re

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"')
_SAMPLE = re.compile(rf"({_NAME})(\{{[^\n]*\}})? (\S+)")
_TYPES = {"counter", "gauge", "histogram", "summary", "untyped"}

Sample = tuple[str, dict[str, str], float]


def parse(text: str) -> tuple[dict[str, str], list[Sample]]:
    """(family -> type, samples). The text must end with a newline."""
    if text and not text.endswith("\n"):
        raise ValueError("exposition must end with a newline")
    types: dict[str, str] = {}
    samples: list[Sample] = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.startswith("# HELP "):
            if not re.fullmatch(rf"# HELP {_NAME} .*", line):
                raise ValueError(f"line {number}: bad HELP {line!r}")
        elif line.startswith("# TYPE "):
            match = re.fullmatch(rf"# TYPE ({_NAME}) (\w+)", line)
            if match is None or match.group(2) not in _TYPES or match.group(1) in types:
                raise ValueError(f"line {number}: bad TYPE {line!r}")
            types[match.group(1)] = match.group(2)
        else:
            samples.append(_sample(number, line, types))
    return types, samples


def _sample(number: int, line: str, types: dict[str, str]) -> Sample:
    match = _SAMPLE.fullmatch(line)
    if match is None:
        raise ValueError(f"line {number}: not a sample {line!r}")
    name, labels_text, value = match.groups()
    if name not in types:
        raise ValueError(f"line {number}: sample of {name} before its TYPE")
    labels: dict[str, str] = {}
    if labels_text:
        inner = labels_text[1:-1]
        pos = 0
        while pos < len(inner):
            label = _LABEL.match(inner, pos)
            if label is None:
                raise ValueError(f"line {number}: bad labels {labels_text!r}")
            key = label.group(1)
            if key in labels:
                raise ValueError(f"line {number}: label {key} twice")
            labels[key] = (
                label.group(2).replace("\\n", "\n").replace('\\"', '"').replace("\\\\", "\\")
            )
            pos = label.end()
            if pos < len(inner):
                if inner[pos] != ",":
                    raise ValueError(f"line {number}: bad labels {labels_text!r}")
                pos += 1
    return name, labels, float(value)
