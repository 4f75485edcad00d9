#!/usr/bin/env python3
"""Turn the AWS provider's jsii assembly (npm @cdktn/provider-aws) into a Terraform provider schema.

The CDK-for-Terraform bindings are generated from the real provider's schema, so their `.jsii`
assembly lists every resource and data source, each argument with its type and whether it is
required, every nested block, and every computed attribute (as a getter). This script reads it and
writes the schema as a compact JSON file that `provider.py` serves over the plugin protocol.

What is lost on the way (documented in terraform/README.md): list vs set (both become list),
single nested blocks vs max-one lists (both become a list of at most one), and enum values
(never in the schema anyway). Everything `terraform validate` relies on is kept: names of
resources, data sources, arguments and blocks, required flags, block counts, value types, and the
computed attributes that references may use.

Usage: extract_schema.py PATH/TO/.jsii OUT.json
"""

import json
import re
import sys

LINK = re.compile(r"/docs/(resources|data-sources)/(\w+)[ #}]")
ANCHOR = re.compile(r"#(\w+) ")
SKIP_GETTERS = {"tfResourceType", "internalValue", "fqn", "friendlyUniqueId", "functions"}


def snake(name):
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", name).lower()


class Extractor:
    def __init__(self, types):
        self.types = types
        self.provider_config = False  # provider arguments are never computed

    def tf_name(self, prop):
        docs = prop.get("docs", {})
        summary = docs.get("summary", "")
        if summary.endswith(" block."):
            return summary[: -len(" block.")]
        for text in (summary, docs.get("remarks", "")):
            m = ANCHOR.search(text)
            if m:
                return m.group(1)
        return snake(prop["name"])

    # --- value types --------------------------------------------------------------------
    def value_type(self, t):
        """cty type (as JSON) of a jsii type reference, or None when it is a nested block."""
        if "primitive" in t:
            return {"string": "string", "number": "number", "boolean": "bool"}.get(t["primitive"], "dynamic")
        if "union" in t:
            inner = [x for x in t["union"]["types"] if x.get("fqn") != "cdktn.IResolvable"]
            if not inner:
                return "bool"  # a computed boolean is typed IResolvable alone
            return self.value_type(inner[0])
        if "collection" in t:
            col = t["collection"]
            elem = self.value_type(col["elementtype"])
            if elem is None:
                return None
            return ["map", elem] if col["kind"] == "map" else ["list", elem]
        fqn = t.get("fqn", "")
        builtin = {
            "cdktn.IResolvable": "bool",
            "cdktn.StringMap": ["map", "string"],
            "cdktn.NumberMap": ["map", "number"],
            "cdktn.BooleanMap": ["map", "bool"],
            "cdktn.AnyMap": ["map", "string"],
            "cdktn.StringMapList": ["list", ["map", "string"]],
            "cdktn.NumberMapList": ["list", ["map", "number"]],
            "cdktn.BooleanMapList": ["list", ["map", "bool"]],
            "cdktn.AnyMapList": ["list", ["map", "string"]],
            "cdktn.StringListList": ["list", ["list", "string"]],
            "cdktn.NumberListList": ["list", ["list", "number"]],
        }
        if fqn in builtin:
            return builtin[fqn]
        decl = self.types.get(fqn)
        if decl is None:
            return "dynamic"
        if decl.get("datatype"):
            return None  # a struct: a nested block
        return None

    def computed_object(self, fqn, depth=0):
        """Object type of a computed complex value (a *List or *OutputReference class)."""
        decl = self.types.get(fqn, {})
        if fqn.endswith("List") or fqn.endswith("Map"):
            for m in decl.get("methods", []):
                if m["name"] == "get":
                    inner = m["returns"]["type"].get("fqn", "")
                    obj = self.computed_object(inner, depth + 1)
                    return ["map", obj] if fqn.endswith("Map") else ["list", obj]
            return ["list", "string"]
        attrs = {}
        for p in decl.get("properties", []):
            n = p["name"]
            if n.endswith("Input") or n in SKIP_GETTERS or p.get("static"):
                continue
            attrs[snake(n)] = self.getter_type(p["type"], depth + 1)
        return ["object", attrs]

    def getter_type(self, t, depth=0):
        if depth > 8:
            return "string"
        vt = self.value_type(t)
        if vt is not None:
            return vt
        fqn = t.get("fqn") or ""
        if "collection" in t:
            fqn = t["collection"]["elementtype"].get("fqn", "")
        if fqn.endswith("OutputReference"):
            return ["list", self.computed_object(fqn, depth)]
        if fqn.endswith("List") or fqn.endswith("Map"):
            return self.computed_object(fqn, depth)
        return "string"

    # --- blocks ---------------------------------------------------------------------------
    def block(self, struct_fqn, class_fqn=None, drop=(), depth=0):
        decl = self.types[struct_fqn]
        if depth > 12:  # a self-referencing struct (e.g. WAF statements): cut the recursion
            return {"attributes": [], "block_types": []}
        attrs, blocks, seen = [], [], set()
        for p in decl.get("properties", []):
            if p["name"] in drop:
                continue
            seen.add(p["name"])
            name = self.tf_name(p)
            required = not p.get("optional", False)
            vt = self.value_type(p["type"])
            if vt is not None:
                attrs.append(
                    {
                        "name": name,
                        "type": vt,
                        "required": required,
                        "optional": not required,
                        "computed": not required and not self.provider_config,
                    }
                )
                continue
            t = p["type"]
            if "union" in t:
                t = next(x for x in t["union"]["types"] if x.get("fqn") != "cdktn.IResolvable")
            if "collection" in t:
                inner = t["collection"]["elementtype"]["fqn"]
                max_items = 0
            else:
                inner = t["fqn"]
                max_items = 1
            blocks.append(
                {
                    "name": name,
                    "nesting": 2,
                    "min_items": 1 if required else 0,
                    "max_items": max_items,
                    "block": self.block(inner, inner + "OutputReference", depth=depth + 1),
                }
            )
        if class_fqn and class_fqn in self.types:
            for p in self.types[class_fqn].get("properties", []):
                n = p["name"]
                if n.endswith("Input") or n in SKIP_GETTERS or n in seen or p.get("static"):
                    continue
                if self.types[class_fqn].get("base") == "cdktn.ComplexObject" and n in (
                    "complexObjectIndex",
                    "complexObjectIsFromSet",
                ):
                    continue
                attrs.append(
                    {
                        "name": snake(n),
                        "type": self.getter_type(p["type"]),
                        "required": False,
                        "optional": False,
                        "computed": True,
                    }
                )
        attrs.sort(key=lambda a: a["name"])
        blocks.sort(key=lambda b: b["name"])
        return {"attributes": attrs, "block_types": blocks}

    def run(self):
        out = {"provider": None, "resources": {}, "data_sources": {}}
        for fqn, decl in self.types.items():
            if decl.get("kind") != "class":
                continue
            base = decl.get("base")
            summary = decl.get("docs", {}).get("summary", "")
            if base == "cdktn.TerraformProvider":
                self.provider_config = True
                out["provider"] = self.block(fqn + "Config", drop=("alias",))
                self.provider_config = False
                continue
            if base not in ("cdktn.TerraformResource", "cdktn.TerraformDataSource"):
                continue
            m = LINK.search(summary)
            if not m:
                continue
            kind, short = m.groups()
            config = fqn + "Config"
            if config not in self.types:
                continue
            table = out["resources"] if kind == "resources" else out["data_sources"]
            table["aws_" + short] = self.block(config, fqn)
        return out


def main():
    src, dst = sys.argv[1], sys.argv[2]
    with open(src) as f:
        assembly = json.load(f)
    schema = Extractor(assembly["types"]).run()
    if schema["provider"] is None:
        sys.exit(f"{src}: no provider class: not a CDK for Terraform provider assembly")
    # The provider version the bindings were generated from, as their documentation links show it.
    version = re.search(r"registry\.terraform\.io/providers/hashicorp/aws/([0-9.]+)/", json.dumps(assembly["types"]))
    schema["version"] = version.group(1) if version else "unknown"
    with open(dst, "w") as f:
        json.dump(schema, f, separators=(",", ":"), sort_keys=True)
    print(
        f"{len(schema['resources'])} resources, {len(schema['data_sources'])} data sources, provider {schema['version']}"
    )


if __name__ == "__main__":
    main()
