#!/usr/bin/env python3
"""Writes api/src/proto/fields.rs: the field numbers and wire types of the Kubernetes
protobuf messages, read from the prost attributes of the k8s-pb crate (crates.io, Apache-2.0)
that Cargo has unpacked. keel uses the table to decode the protobuf bodies typed clients
(kubectl create, client-go clientsets) send; JSON names come from the OpenAPI schemas at run time.

It also writes KEEPS_ZERO: the scalar fields whose zero value (false, 0, "") Go's JSON keeps.
Go's protobuf writes every non-pointer field, zero or not, but a Go struct cannot tell a zero
non-pointer field from an absent one and `omitempty` leaves it out of the JSON; a pointer
(`*bool`, `*int32`, `*string`) or a field without `omitempty` keeps it. That comes from the Go
types of the Kubernetes release k8s-pb was built from (k8s-pb 0.9.0 is Kubernetes 1.35), read
from kubernetes/api, apimachinery, apiextensions-apiserver, kube-aggregator and metrics at the
matching tag (v0.35.0), unpacked side by side under one directory, and matched to the messages
by package, struct name and protobuf field number:

    for r in api apimachinery apiextensions-apiserver kube-aggregator metrics; do
        mkdir -p DIR/$r && git -C CLONE-OF-$r archive v0.35.0 | tar -x -C DIR/$r
    done
    ops/gen/k8s-proto-table.py --go-src DIR [path/to/k8s-pb-X.Y.Z] > api/src/proto/fields.rs
    rustfmt --edition 2024 api/src/proto/fields.rs
"""
import argparse
import glob
import os
import re
import sys


def crate_dir(given):
    if given:
        return given
    home = os.environ.get("CARGO_HOME", os.path.expanduser("~/.cargo"))
    found = sorted(glob.glob(os.path.join(home, "registry/src/*/k8s-pb-*")))
    if not found:
        sys.exit("k8s-pb is not unpacked: run `cargo fetch` first")
    return found[-1]


ATTR = re.compile(r'#\[prost\((.*?)tag = "(\d+)"(.*?)\)\]')
FIELD = re.compile(r'pub (r#)?(\w+):\s*(.+),$')


def resolve(module, type_path):
    """A field's Rust type path, relative to `module`, as a dotted message name."""
    parts = type_path.split("::")
    base = list(module)
    while parts and parts[0] == "super":
        parts.pop(0)
        base.pop()
    return ".".join(base + parts)


def inner(type_text):
    type_text = type_text.strip()
    for wrapper in ("::core::option::Option<", "::prost::alloc::vec::Vec<", "::prost::alloc::boxed::Box<"):
        if type_text.startswith(wrapper):
            return inner(type_text.rstrip(",").strip()[len(wrapper):].rstrip(",").strip()[:-1])
    return type_text.rstrip(",").strip()


GO_STRUCT = re.compile(r"^type (\w+) struct \{\s*$")
# `type MatchCondition v1.MatchCondition`: a struct defined as another package's.
GO_DEFINED = re.compile(r"^type (\w+) (\w+)\.(\w+)\s*$")
GO_IMPORT = re.compile(r'^\s*(?:import\s+)?(\w+\s+)?"k8s\.io/([\w./-]+)"')
GO_FIELD = re.compile(r"^\s*(?:\w+\s+)?(\S+)\s+`([^`]*)`")
GO_PROTOBUF = re.compile(r'protobuf:"(\w+),(\d+),[^"]*name=(\w+)')
GO_JSON = re.compile(r'json:"([^"]*)"')


def go_fields(go_src):
    """{(lower-case message name, field number): (whether JSON keeps the field's zero value,
    the field's protobuf name)} for every Go struct field with a protobuf tag, in the packages
    that have a generated.proto."""
    out = {}
    defined = []
    for d, _, files in sorted(os.walk(go_src)):
        if "generated.proto" not in files:
            continue
        proto = open(os.path.join(d, "generated.proto")).read()
        package = re.search(r"^package k8s\.io\.(\S+);", proto, re.M).group(1)
        for f in sorted(files):
            if not f.endswith(".go") or f.endswith(("_test.go", ".pb.go")) or f.startswith("zz_generated"):
                continue
            struct = None
            imports = {}
            for line in open(os.path.join(d, f)):
                if m := GO_IMPORT.match(line):
                    path = m.group(2).replace("-", "_")
                    imports[(m.group(1) or path.rsplit("/", 1)[-1]).strip()] = path.replace("/", ".")
                elif m := GO_DEFINED.match(line):
                    if m.group(2) in imports:
                        source = f"{imports[m.group(2)]}.{m.group(3)}".lower()
                        defined.append((f"{package}.{m.group(1)}".lower(), source))
                elif m := GO_STRUCT.match(line):
                    struct = f"{package}.{m.group(1)}".lower()
                elif line.startswith("}"):
                    struct = None
                elif struct and (m := GO_FIELD.match(line)):
                    go_type, tags = m.groups()
                    number = GO_PROTOBUF.search(tags)
                    if not number:
                        continue
                    json_tag = GO_JSON.search(tags)
                    options = json_tag.group(1).split(",")[1:] if json_tag else []
                    omits = "omitempty" in options or "omitzero" in options
                    keeps = go_type.startswith("*") or not omits
                    out[(struct, int(number.group(2)))] = (keeps, number.group(3))
    for struct, source in defined:
        for (message, number), field in list(out.items()):
            if message == source:
                out[(struct, number)] = field
    return out


SCALARS = ("Bool", "Int32", "Int64", "Double", "String", "Bytes")
# Go types with their own JSON form, which api/src/proto/mod.rs decodes by hand.
CUSTOM_JSON = ("Quantity", "QuantityValue", "Time", "MicroTime")


def main():
    args = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    args.add_argument("--go-src", required=True, help="kubernetes/api, apimachinery, ... unpacked under one directory")
    args.add_argument("crate", nargs="?", help="the unpacked k8s-pb crate (default: the newest in Cargo's registry)")
    args = args.parse_args()
    keeps = go_fields(args.go_src)
    keeps_zero = []
    unmatched = []
    root = os.path.join(crate_dir(args.crate), "src")
    messages = []
    for path in sorted(glob.glob(os.path.join(root, "**/mod.rs"), recursive=True)):
        module = os.path.relpath(os.path.dirname(path), root).split(os.sep)
        if module == ["."]:
            continue
        lines = open(path).read().split("\n")
        current = None
        pending = None
        joined = []
        for line in lines:
            s = line.strip()
            # A field whose type runs over several lines ends with a comma.
            last = joined[-1] if joined else ""
            unfinished = not last.endswith(",") or last.count("<") != last.count(">")
            if re.match(r"pub (r#)?\w+:", last) and unfinished:
                joined[-1] += " " + s
                continue
            joined.append(s)
        for s in joined:
            m = re.match(r"pub struct (\w+) \{", s)
            if m:
                current = (".".join(module + [m.group(1)]), [])
                messages.append(current)
                continue
            if s == "}":
                current = None
                continue
            if current is None:
                continue
            a = ATTR.search(s)
            if a:
                pending = (a.group(1) + a.group(3), int(a.group(2)))
                continue
            f = FIELD.match(s)
            if f and pending:
                spec, tag = pending
                pending = None
                name, type_text = f.group(2), f.group(3)
                repeated = "repeated" in spec
                kinds = [k.strip() for k in spec.split(",") if k.strip()]
                kind = kinds[0]
                if kind.startswith("btree_map"):
                    key, value = re.search(r'"(\w+), (\w+)"', spec).groups()
                    target = ""
                    if value == "message":
                        value_type = type_text.split(",", 1)[1].strip().rstrip(">").strip().rstrip(",").strip()
                        target = resolve(module, inner(value_type))
                    entry = f'F {{ tag: {tag}, name: "{name}", kind: K::Map(K2::{key.capitalize()}, K2::{value.capitalize()}), message: "{target}", repeated: false }}'
                else:
                    if kind.startswith("bytes"):
                        kind = "bytes"
                    target = resolve(module, inner(type_text)) if kind == "message" else ""
                    entry = f'F {{ tag: {tag}, name: "{name}", kind: K::{kind.capitalize()}, message: "{target}", repeated: {"true" if repeated else "false"} }}'
                    custom = current[0].rsplit(".", 1)[-1] in CUSTOM_JSON
                    if kind.capitalize() in SCALARS and not repeated and not custom:
                        keep, go_name = keeps.get((current[0].lower(), tag), (None, ""))
                        if go_name.lower() != name.replace("_", "").lower():
                            unmatched.append(f"{current[0]}.{name} (Go: {go_name or 'none'})")
                        elif keep:
                            keeps_zero.append((current[0], tag))
                current[1].append(entry)
    print("// @generated by ops/gen/k8s-proto-table.py from the k8s-pb crate's prost attributes and the")
    print("// Kubernetes Go types; do not edit.")
    print("use super::{F, K, K2};")
    print("pub const MESSAGES: &[(&str, &[F])] = &[")
    for name, fields in messages:
        print(f'    ("{name}", &[')
        for entry in fields:
            print(f"        {entry},")
        print("    ]),")
    print("];")
    print()
    print("/// The scalar fields whose zero value (false, 0, \"\") JSON keeps: a Go pointer or a field")
    print("/// without `omitempty`. Go's JSON leaves out the zero value of every other scalar field.")
    print("pub const KEEPS_ZERO: &[(&str, &[u32])] = &[")
    by_message = {}
    for message, tag in keeps_zero:
        by_message.setdefault(message, []).append(str(tag))
    for message, tags in by_message.items():
        print(f'    ("{message}", &[{", ".join(tags)}]),')
    print("];")
    for field in unmatched:
        print(f"no Go field matches {field}: its zero value is left out", file=sys.stderr)


main()
