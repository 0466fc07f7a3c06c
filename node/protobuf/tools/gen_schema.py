#!/usr/bin/env python3
"""Generate src/schema.rs: the wire schema of every Kubernetes protobuf message.

Field tags and types come from the prost code of the `k8s-pb` crate; JSON field
names come from the serde code of `k8s-openapi` (the Go json tags), falling back
to lowerCamelCase of the proto field name.

Usage: tools/gen_schema.py <k8s-pb src dir> <k8s-openapi src/v1_NN dir> > src/schema.rs
"""
import os
import re
import sys

PB, OA = sys.argv[1], sys.argv[2]

STRUCT_RE = re.compile(r"^pub struct (\w+) \{(\})?$")
ATTR_RE = re.compile(r'#\[prost\(([^)]*)\)\]')
FIELD_RE = re.compile(r"^\s*pub (?:r#)?(\w+):\s*(.*?),?$")

# Messages whose JSON form is not an object of their fields.
SPECIAL = {
    ("apimachinery.pkg.apis.meta.v1", "Time"): "Time",
    ("apimachinery.pkg.apis.meta.v1", "MicroTime"): "MicroTime",
    ("apimachinery.pkg.apis.meta.v1", "Duration"): "Duration",
    ("apimachinery.pkg.apis.meta.v1", "FieldsV1"): "RawJson",
    ("apimachinery.pkg.apis.meta.v1", "Verbs"): "StringItems",
    ("apimachinery.pkg.api.resource", "Quantity"): "Quantity",
    ("apimachinery.pkg.util.intstr", "IntOrString"): "IntOrString",
    ("apimachinery.pkg.runtime", "RawExtension"): "RawJson",
    ("apiextensions_apiserver.pkg.apis.apiextensions.v1", "JSON"): "RawJson",
    ("apiextensions_apiserver.pkg.apis.apiextensions.v1beta1", "JSON"): "RawJson",
    ("apiextensions_apiserver.pkg.apis.apiextensions.v1", "JSONSchemaPropsOrArray"): "SchemaOrArray",
    ("apiextensions_apiserver.pkg.apis.apiextensions.v1beta1", "JSONSchemaPropsOrArray"): "SchemaOrArray",
    ("apiextensions_apiserver.pkg.apis.apiextensions.v1", "JSONSchemaPropsOrBool"): "SchemaOrBool",
    ("apiextensions_apiserver.pkg.apis.apiextensions.v1beta1", "JSONSchemaPropsOrBool"): "SchemaOrBool",
    ("apiextensions_apiserver.pkg.apis.apiextensions.v1", "JSONSchemaPropsOrStringArray"): "SchemaOrStringArray",
    ("apiextensions_apiserver.pkg.apis.apiextensions.v1beta1", "JSONSchemaPropsOrStringArray"): "SchemaOrStringArray",
}
for d in ("api.authentication.v1", "api.authentication.v1beta1", "api.authorization.v1",
          "api.authorization.v1beta1", "api.certificates.v1", "api.certificates.v1beta1"):
    SPECIAL[(d, "ExtraValue")] = "StringItems"

SPECIAL_LC = {(p, n.lower()): v for (p, n), v in SPECIAL.items()}

# JSON names that differ from the proto field name (JSONSchemaProps).
JSON_OVERRIDES = {"ref": "$ref", "schema": "$schema"}

# Embedded Go structs, for messages k8s-openapi does not know.
INLINE_TYPES = {"LocalObjectReference", "VolumeSource", "PersistentVolumeSource", "IngressRuleValue",
                "DeviceConfiguration", "EphemeralContainerCommon", "RuleWithOperations", "Rule"}

SCALARS = {"string": "Str", "bool": "Bool", "int32": "I32", "int64": "I64",
           "double": "F64", "bytes": "Bytes"}


def camel(snake):
    parts = snake.split("_")
    return parts[0] + "".join(p[:1].upper() + p[1:] for p in parts[1:])


def norm(s):
    return s.replace("_", "").replace("-", "").replace("$", "").lower()


def parse_pb():
    msgs = []  # (pkg, name, [(tag, rust, kind, card, typ, mapval)])
    for root, _dirs, files in os.walk(PB):
        if "mod.rs" not in files:
            continue
        rel = os.path.relpath(root, PB)
        if rel == ".":
            continue
        modpath = rel.split(os.sep)
        lines = open(os.path.join(root, "mod.rs")).read().split("\n")
        cur = None
        attr = None
        pending = ""
        for line in lines:
            s = line.strip()
            m = STRUCT_RE.match(line)
            if m:
                cur = (".".join(modpath), m.group(1), [])
                msgs.append(cur)
                if m.group(2):
                    cur = None
                continue
            if cur is None:
                continue
            if line == "}":
                cur = None
                continue
            a = ATTR_RE.search(s)
            if a:
                attr = a.group(1)
                pending = ""
                continue
            if attr is not None:
                pending += " " + s
                fm = FIELD_RE.match(pending.strip() and "    " + pending.strip())
                if fm and pending.rstrip().endswith(",") and pending.count("<") == pending.count(">"):
                    cur[2].append((attr, fm.group(1), fm.group(2), modpath))
                    attr = None
                    pending = ""
    return msgs


def resolve(typ, modpath):
    """Resolve a prost type path to (pkg, name)."""
    t = typ
    for w in ("::core::option::Option<", "::prost::alloc::boxed::Box<", "::prost::alloc::vec::Vec<"):
        if t.startswith(w):
            t = t[len(w):]
    t = t.strip().rstrip(",").strip().rstrip(">").strip().rstrip(",").strip()
    parts = t.split("::")
    mp = list(modpath)
    while parts and parts[0] == "super":
        parts.pop(0)
        mp.pop()
    return ".".join(mp + parts[:-1]), parts[-1]


def parse_oa():
    names = {}  # (pkg, lower struct) -> {norm: json}
    for root, _dirs, files in os.walk(OA):
        rel = os.path.relpath(root, OA)
        pkg = ".".join(rel.split(os.sep))
        for f in files:
            if not f.endswith(".rs") or f == "mod.rs":
                continue
            text = open(os.path.join(root, f)).read()
            for sm in re.finditer(r"^pub struct (\w+) \{", text, re.M):
                key = (pkg, sm.group(1).lower())
                d = names.setdefault(key, {})
                for fm in re.finditer(r'"([^"]+)" => Field::Key_(\w+),', text):
                    d[norm(fm.group(2))] = fm.group(1)
    return names


def main():
    msgs = parse_pb()
    oa = parse_oa()
    index = {(p, n): i for i, (p, n, _f) in enumerate(msgs)}
    out = []
    w = out.append
    w("// @generated by tools/gen_schema.py from k8s-pb 0.9.0 and k8s-openapi 0.29.0 (v1_33). Do not edit.")
    w("use crate::schema_types::{Card::*, Field, Message, Special, Ty::*};")
    w("")
    w("pub(crate) static MESSAGES: &[Message] = &[")
    unmatched = []
    for pkg, name, fields in msgs:
        special = SPECIAL_LC.get((pkg, name.lower()), "None")
        jn = oa.get((pkg, name.lower()), {})
        w(f'    Message {{ package: "{pkg}", name: "{name}", special: Special::{special}, fields: &[')
        for attr, rust, typ, modpath in fields:
            tag = int(re.search(r'tag = "(\d+)"', attr).group(1))
            json = jn.get(norm(rust))
            if rust in JSON_OVERRIDES and name.lower() == "jsonschemaprops":
                json = JSON_OVERRIDES[rust]
            if rust.startswith("x_kubernetes_"):
                json = rust.replace("_", "-")
            inline = False
            if json is None:
                first = attr.split(",")[0].strip()
                if first == "message" and "repeated" not in attr:
                    sub = msgs[index[resolve(typ, modpath)]]
                    subkeys = [camel(f[1]) for f in sub[2]]
                    if jn:
                        # Go embedded struct (`json:",inline"`): k8s-openapi flattens it.
                        inline = (bool(subkeys) and all(norm(k) in jn for k in subkeys)) or sub[1] in INLINE_TYPES
                    else:
                        inline = camel(rust)[:1].upper() + camel(rust)[1:] == sub[1] and sub[1] in INLINE_TYPES
                if jn and not inline:
                    unmatched.append(f"{pkg}.{name}.{rust}")
                json = camel(rust)
            if rust == "j_son_schemas":
                json = "JSONSchemas"
            first = attr.split(",")[0].strip()
            if first.startswith("btree_map") or first.startswith("map"):
                kv = re.search(r'map = "(\w+), (\w+)"', attr)
                assert kv.group(1) == "string", attr
                vt = kv.group(2)
                if vt == "message":
                    mm = re.search(r"BTreeMap<[^,]+,\s*(.*?),?\s*>$", typ)
                    assert mm, typ
                    inner = mm.group(1)
                    ty = f"Msg({index[resolve(inner, modpath)]})"
                else:
                    ty = SCALARS[vt]
                card = "Map"
            else:
                kind = first.split(" ")[0]
                if kind == "message":
                    ty = f"Msg({index[resolve(typ, modpath)]})"
                else:
                    ty = SCALARS[kind]
                card = "Repeated" if "repeated" in attr else "Single"
                if inline:
                    card = "Inline"
            w(f'        Field {{ tag: {tag}, json: "{json}", ty: {ty}, card: {card} }},')
        w("    ] },")
    w("];")
    print("\n".join(out))
    for u in unmatched:
        print("unmatched:", u, file=sys.stderr)


main()
