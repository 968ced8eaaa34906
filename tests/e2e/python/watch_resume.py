"""The Python kubernetes client against Skiff's HTTP API (run by
tests/e2e/kubectl.rs): list, create, patch, and a watch resumed from a
resourceVersion across a dropped connection; or, with `expired RV`, a
watch from a compacted version (410) and the relist that follows.

Prints one line per watch event: `EVENT TYPE NAME RESOURCEVERSION`.
"""
import sys

from kubernetes import client, config, watch

config.load_kube_config(sys.argv[1])
v1 = client.CoreV1Api()
NS = sys.argv[2]


def events(resource_version):
    """Watches from resource_version until the server's 2 s timeout."""
    seen = []
    w = watch.Watch()
    for ev in w.stream(v1.list_namespaced_config_map, NS,
                       resource_version=resource_version, timeout_seconds=2):
        meta = ev["object"].metadata
        seen.append((ev["type"], meta.name, meta.resource_version))
        print("EVENT", ev["type"], meta.name, meta.resource_version, flush=True)
    return seen


if sys.argv[3] == "resume":
    listed = v1.list_namespaced_config_map(NS)
    start = listed.metadata.resource_version
    print("START", start, flush=True)
    v1.create_namespaced_config_map(NS, client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name="a"), data={"k": "1"}))
    first = events(start)
    assert [(t, n) for t, n, _ in first] == [("ADDED", "a")], first
    # The connection is gone; meanwhile the world moves on.
    v1.create_namespaced_config_map(NS, client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name="b"), data={"k": "2"}))
    v1.create_namespaced_config_map(NS, client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name="c"), data={"k": "3"}))
    patched = v1.patch_namespaced_config_map("a", NS, {"data": {"k": "9"}})
    assert patched.data == {"k": "9"}, patched.data
    second = events(first[-1][2])
    got = [(t, n) for t, n, _ in second]
    assert got == [("ADDED", "b"), ("ADDED", "c"), ("MODIFIED", "a")], got
    versions = [int(rv) for _, _, rv in first + second]
    assert versions == sorted(set(versions)), versions
    print("RESUMED", flush=True)
elif sys.argv[3] == "expired":
    try:
        events(sys.argv[4])
        print("NOT EXPIRED", flush=True)
    except client.exceptions.ApiException as e:
        print("EXPIRED", e.status, flush=True)
        relisted = v1.list_namespaced_config_map(NS)
        print("RELISTED", len(relisted.items), relisted.metadata.resource_version, flush=True)
