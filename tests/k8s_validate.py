#!/usr/bin/env python3
"""Checks the Kubernetes objects of a multi-document YAML stream (a file, or stdin) without a cluster.

Usage: k8s_validate.py [FILE...]

Each object is deserialized by the official `kubernetes` client's ApiClient into its model
(V1Pod, V1Deployment, V1ConfigMap), which rejects a missing required field. The client itself
drops unknown keys and coerces types silently, so every object is also walked against the
models' attribute_map and openapi_types: an unknown key or a value of the wrong type is an
error. On top, a few rules the API server enforces that the models do not carry (names are
DNS labels, only init containers restart on their own, quantities parse, ...).

Exit 0 and `ok: N objects` on stdout when every object of every file passes; otherwise exit 1
with one line per problem on stderr, each naming its file.
"""

import inspect
import json
import re
import sys

import yaml
from kubernetes import client
from kubernetes.utils import parse_quantity

MODELS = {
    ("v1", "ConfigMap"): "V1ConfigMap",
    ("v1", "Pod"): "V1Pod",
    ("apps/v1", "Deployment"): "V1Deployment",
}
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
CONFIG_MAP_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")


class Problems:
    def __init__(self):
        self.lines = []

    def add(self, path, message):
        self.lines.append(f"{path}: {message}")


def walk(value, type_name, path, problems):
    """Checks `value` against the client's type `type_name`, recursively."""
    container = re.match(r"^(?:list|List)\[(.*)\]$", type_name)
    mapping = re.match(r"^(?:dict\(|Dict\[)str, (.*)[\])]$", type_name)
    if container:
        if not isinstance(value, list):
            problems.add(path, f"expected a list ({type_name}), found {type(value).__name__}")
            return
        for i, item in enumerate(value):
            walk(item, container.group(1), f"{path}[{i}]", problems)
    elif mapping:
        if not isinstance(value, dict):
            problems.add(path, f"expected a map ({type_name}), found {type(value).__name__}")
            return
        for key, item in value.items():
            if not isinstance(key, str):
                problems.add(path, f"map key {key!r} is not a string")
            walk(item, mapping.group(1), f"{path}.{key}", problems)
    elif type_name == "str":
        if not isinstance(value, str):
            problems.add(path, f"expected a string, found {type(value).__name__} {value!r}")
    elif type_name == "int":
        if not isinstance(value, int) or isinstance(value, bool):
            problems.add(path, f"expected an integer, found {type(value).__name__} {value!r}")
    elif type_name == "bool":
        if not isinstance(value, bool):
            problems.add(path, f"expected a boolean, found {type(value).__name__} {value!r}")
    elif type_name == "float":
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            problems.add(path, f"expected a number, found {type(value).__name__} {value!r}")
    elif type_name == "object":
        # IntOrString (ports) and the like: a scalar, never a structure.
        if not isinstance(value, (int, str)) or isinstance(value, bool):
            problems.add(path, f"expected an integer or a string, found {value!r}")
    elif type_name in ("datetime", "date"):
        if not isinstance(value, str):
            problems.add(path, f"expected a timestamp string, found {value!r}")
    else:
        model = getattr(client, type_name, None)
        if model is None:
            problems.add(path, f"the client has no model {type_name}")
            return
        if not isinstance(value, dict):
            problems.add(path, f"expected an object ({type_name}), found {value!r}")
            return
        by_key = {key: attr for attr, key in model.attribute_map.items()}
        for key, item in value.items():
            attr = by_key.get(key)
            if attr is None:
                problems.add(path, f"unknown field {key!r} in {type_name}")
                continue
            walk(item, model.openapi_types[attr], f"{path}.{key}", problems)


class Response:
    """What an older ApiClient.deserialize reads: an HTTP response with its body."""

    def __init__(self, obj):
        self.data = json.dumps(obj)


def deserialize(api, doc, model):
    """The client's own deserialization of `doc` into `model`, for either generation of the
    client: `deserialize(text, type, content_type)` (v33 on) or `deserialize(response, type)`."""
    params = inspect.signature(api.deserialize).parameters
    if "content_type" in params:
        return api.deserialize(json.dumps(doc), model, "application/json")
    return api.deserialize(Response(doc), model)


def check_probe(probe, path, must_be_one, problems):
    handlers = [k for k in ("exec", "httpGet", "tcpSocket", "grpc") if k in probe]
    if len(handlers) != 1:
        problems.add(path, f"a probe needs exactly one handler, has {handlers}")
    if must_be_one and probe.get("successThreshold", 1) != 1:
        problems.add(path, "successThreshold must be 1 for liveness and startup probes")
    for key in ("httpGet", "tcpSocket"):
        port = probe.get(key, {}).get("port")
        if isinstance(port, int) and not 1 <= port <= 65535:
            problems.add(f"{path}.{key}.port", f"port {port} out of range")


def check_resources(resources, path, problems):
    parsed = {}
    for kind in ("limits", "requests"):
        for name, quantity in (resources.get(kind) or {}).items():
            try:
                parsed[(kind, name)] = parse_quantity(quantity)
            except ValueError as e:
                problems.add(f"{path}.{kind}.{name}", f"not a quantity: {quantity!r} ({e})")
    for (kind, name), value in parsed.items():
        limit = parsed.get(("limits", name))
        if kind == "requests" and limit is not None and value > limit:
            problems.add(f"{path}.requests.{name}", "request above the limit")


def check_pod_spec(spec, path, problems):
    seen = set()
    volumes = {v["name"] for v in spec.get("volumes") or []}
    for group in ("initContainers", "containers"):
        for i, c in enumerate(spec.get(group) or []):
            cpath = f"{path}.{group}[{i}]"
            name = c.get("name", "")
            if not DNS_LABEL.match(name):
                problems.add(cpath, f"container name {name!r} is not a DNS label")
            if name in seen:
                problems.add(cpath, f"container name {name!r} is used twice")
            seen.add(name)
            restart = c.get("restartPolicy")
            sidecar = group == "initContainers" and restart == "Always"
            if restart is not None and not sidecar:
                problems.add(cpath, "only an init container may set restartPolicy, and only to Always")
            for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
                if probe not in c:
                    continue
                if group == "initContainers" and not sidecar:
                    problems.add(cpath, f"an init container that is not a sidecar cannot have a {probe}")
                check_probe(c[probe], f"{cpath}.{probe}", probe != "readinessProbe", problems)
            check_resources(c.get("resources") or {}, f"{cpath}.resources", problems)
            for m in c.get("volumeMounts") or []:
                if m.get("name") not in volumes:
                    problems.add(cpath, f"volumeMount {m.get('name')!r} names no volume")
            for p in c.get("ports") or []:
                port = p.get("containerPort")
                if isinstance(port, int) and not 1 <= port <= 65535:
                    problems.add(cpath, f"containerPort {p.get('containerPort')} out of range")
    if not spec.get("containers"):
        problems.add(path, "a pod needs at least one container")
    if spec.get("restartPolicy", "Always") not in ("Always", "OnFailure", "Never"):
        problems.add(path, f"restartPolicy {spec['restartPolicy']!r} is not one of Always, OnFailure, Never")
    if spec.get("terminationGracePeriodSeconds", 0) < 0:
        problems.add(path, "terminationGracePeriodSeconds is negative")


def check(doc, index, api, problems):
    where = f"document {index}"
    if not isinstance(doc, dict):
        problems.add(where, "not an object")
        return
    model = MODELS.get((doc.get("apiVersion"), doc.get("kind")))
    if model is None:
        problems.add(where, f"unexpected apiVersion/kind {doc.get('apiVersion')}/{doc.get('kind')}")
        return
    where = f"{where} ({doc['kind']})"
    try:
        obj = deserialize(api, doc, model)
        if type(obj).__name__ != model:
            problems.add(where, f"the client made a {type(obj).__name__}, not a {model}")
    except (ValueError, TypeError) as e:
        problems.add(where, f"the client's {model} rejects it: {e}")
    walk(doc, model, where, problems)
    name = (doc.get("metadata") or {}).get("name", "")
    if not DNS_LABEL.match(name):
        problems.add(where, f"metadata.name {name!r} is not a DNS label")
    if doc["kind"] == "ConfigMap":
        for key in doc.get("data") or {}:
            if not CONFIG_MAP_KEY.match(key):
                problems.add(f"{where}.data", f"key {key!r} is not a valid ConfigMap key")
    elif doc["kind"] == "Pod":
        check_pod_spec(doc.get("spec") or {}, f"{where}.spec", problems)
    elif doc["kind"] == "Deployment":
        spec = doc.get("spec") or {}
        template = spec.get("template") or {}
        pod = template.get("spec") or {}
        check_pod_spec(pod, f"{where}.spec.template.spec", problems)
        if pod.get("restartPolicy", "Always") != "Always":
            problems.add(where, "a Deployment's pods must have restartPolicy Always")
        wanted = (spec.get("selector") or {}).get("matchLabels") or {}
        labels = (template.get("metadata") or {}).get("labels") or {}
        if not wanted or any(labels.get(k) != v for k, v in wanted.items()):
            problems.add(where, "spec.selector does not match the template's labels")


def main():
    streams = []
    if len(sys.argv) > 1:
        for name in sys.argv[1:]:
            with open(name, encoding="utf-8") as f:
                streams.append((name, list(yaml.safe_load_all(f))))
    else:
        streams.append(("stdin", list(yaml.safe_load_all(sys.stdin))))
    api = client.ApiClient()
    lines = []
    count = 0
    for name, docs in streams:
        docs = [d for d in docs if d is not None]
        problems = Problems()
        if not docs:
            problems.add("stream", "no objects")
        for i, doc in enumerate(docs):
            check(doc, i, api, problems)
        count += len(docs)
        lines.extend(f"{name}: {line}" for line in problems.lines)
    if lines:
        for line in lines:
            print(line, file=sys.stderr)
        return 1
    print(f"ok: {count} objects")
    return 0


if __name__ == "__main__":
    sys.exit(main())
