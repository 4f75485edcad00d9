"""Shared helpers for the terraform/ tests (run by scripts/check-terraform).

TF_CHECK_DIR selects the configuration under test (default: this repository's terraform/); the
planted-mistake tests point it at a mutated copy.
"""

import os
import pathlib
import re

import hcl2
import pytest

TF_DIR = pathlib.Path(os.environ.get("TF_CHECK_DIR") or pathlib.Path(__file__).resolve().parent.parent)


def _unquote(value):
    """python-hcl2 keeps string literals quoted and expressions as ${...}: normalise both."""
    if isinstance(value, str):
        if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
            return value[1:-1].replace('\\"', '"')
        return value
    if isinstance(value, list):
        return [_unquote(v) for v in value]
    if isinstance(value, dict):
        return {_unquote(k): _unquote(v) for k, v in value.items() if not (k.startswith("__") and k.endswith("__"))}
    return value


class Config:
    """The .tf files of one directory, as plain dicts: resources[type][name] = body, etc."""

    def __init__(self, directory):
        self.dir = pathlib.Path(directory)
        self.resources, self.data, self.variables, self.outputs = {}, {}, {}, {}
        self.locals, self.checks, self.providers, self.modules = {}, {}, [], {}
        self.text = {}
        for path in sorted(self.dir.glob("*.tf")):
            text = path.read_text()
            self.text[path.name] = text
            tree = _unquote(hcl2.loads(text))
            for block in tree.get("resource", []):
                for rtype, named in block.items():
                    for name, body in named.items():
                        self.resources.setdefault(rtype, {})[name] = body
            for block in tree.get("data", []):
                for dtype, named in block.items():
                    for name, body in named.items():
                        self.data.setdefault(dtype, {})[name] = body
            for block in tree.get("variable", []):
                self.variables.update(block)
            for block in tree.get("output", []):
                self.outputs.update(block)
            for block in tree.get("locals", []):
                self.locals.update(block)
            for block in tree.get("check", []):
                self.checks.update(block)
            for block in tree.get("provider", []):
                for name, body in block.items():
                    self.providers.append((name, body))
            for block in tree.get("module", []):
                self.modules.update(block)

    def all_text(self):
        return "\n".join(self.text.values())

    def resource(self, rtype, name=None):
        named = self.resources.get(rtype, {})
        assert named, f"no {rtype} resource in {self.dir}"
        if name is None:
            assert len(named) == 1, f"expected one {rtype}, found {sorted(named)}"
            return next(iter(named.values()))
        assert name in named, f"no {rtype}.{name} in {self.dir} (have {sorted(named)})"
        return named[name]

    def default(self, variable):
        assert variable in self.variables, f"no variable {variable!r}"
        return self.variables[variable].get("default")


def block(body, name):
    """The single nested block `name` of a resource body (python-hcl2 gives blocks as lists)."""
    value = body.get(name)
    assert value, f"missing block {name!r}"
    if isinstance(value, list):
        assert len(value) == 1, f"expected one {name!r} block, found {len(value)}"
        return value[0]
    return value


def blocks(body, name):
    value = body.get(name) or []
    return value if isinstance(value, list) else [value]


def refers_to(value, pattern):
    return isinstance(value, str) and re.search(pattern, value) is not None


@pytest.fixture(scope="session")
def tf():
    return Config(TF_DIR)


def policy(name, directory=None):
    """A template of terraform/policies/ rendered with each value as its own placeholder ("${queue_arn}" stays
    "${queue_arn}"; a JSON-encoded list becomes ["${artifact_object_arns}"]): its structure, names intact."""
    import json

    path = pathlib.Path(directory or TF_DIR) / "policies" / f"{name}.json.tftpl"
    text = path.read_text()
    text = re.sub(r'("\s*:\s*)\$\{(\w+)\}', r'\1["${\2}"]', text)  # an unquoted value is a JSON-encoded list
    return json.loads(text)


def statements(doc):
    s = doc["Statement"]
    return {st.get("Sid", str(i)): st for i, st in enumerate(s if isinstance(s, list) else [s])}


def as_list(v):
    return v if isinstance(v, list) else [v]
