using System.Net;
using Weft.Identity;
using Weft.Inventory;
using Weft.Proxy;

namespace Weft.Fuzz;

/// <summary>The fixed cluster the request and policy harnesses decide against: one enrolled pod with policies.</summary>
internal static class FuzzWorld
{
    public static readonly LocalPod Pod = new("demo", "b1", "server", "/proc/self/ns/net", 1, IPAddress.Parse("10.244.2.2"), IPAddress.Parse("fd00::2:2"), FailOpen: false);

    public static readonly SelfTarget Guard = new(new ProxyOptions(), []);

    public static readonly SpiffeId Peer = new("cluster.local", "demo", "client");

    public static readonly InventorySnapshot Snapshot = InventoryBuilder.Build(InventoryYaml.Load("""
        apiVersion: v1
        kind: Namespace
        metadata: {name: demo, labels: {weft.dev/mesh: enabled}}
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: b1, namespace: demo, labels: {app: b}}
        spec: {nodeName: node2, serviceAccountName: server}
        status: {podIP: 10.244.2.2, podIPs: [{ip: 10.244.2.2}, {ip: "fd00::2:2"}], hostIP: 10.0.0.2}
        ---
        apiVersion: weft.dev/v1alpha1
        kind: AuthorizationPolicy
        metadata: {name: deny-x, namespace: demo}
        spec:
          selector: {matchLabels: {app: b}}
          action: DENY
          rules:
          - from: [{source: {principals: ["cluster.local/ns/other/sa/x"]}}]
            to: [{operation: {ports: ["9999"]}}]
        """, "fuzz-world.yaml"));
}
