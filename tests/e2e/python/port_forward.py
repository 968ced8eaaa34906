"""The Python kubernetes client's port forwarding against Skiff (run by
tests/e2e/kubectl.rs): one HTTP/1.0 GET to a pod's port through
`kubernetes.stream.portforward` (WebSocket channels), the response
printed, then whatever the server said went wrong, if anything.

Usage: port_forward.py KUBECONFIG NAMESPACE POD PORT
"""
import sys

from kubernetes import client, config
from kubernetes.stream import portforward

config.load_kube_config(sys.argv[1])
v1 = client.CoreV1Api()
namespace, pod, port = sys.argv[2], sys.argv[3], int(sys.argv[4])
forwarded = portforward(
    v1.connect_get_namespaced_pod_portforward, pod, namespace, ports=str(port)
)
sock = forwarded.socket(port)
sock.setblocking(True)
sock.sendall(b"GET /index.html HTTP/1.0\r\nHost: localhost\r\n\r\n")
received = b""
while True:
    chunk = sock.recv(65536)
    if not chunk:
        break
    received += chunk
sock.close()
sys.stdout.write(received.decode(errors="replace"))
error = forwarded.error(port)
if error:
    print("ERROR", error)
