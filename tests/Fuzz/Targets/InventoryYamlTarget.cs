using System.Text;
using Weft.Inventory;

namespace Weft.Fuzz;

/// <summary>
/// An inventory file (YAML, as <c>--inventory</c> reads it) into the snapshot builder. A bad file is an
/// <see cref="InventoryLoadException"/> with a position; objects the builder cannot use become warnings.
/// </summary>
internal sealed class InventoryYamlTarget : IFuzzTarget
{
    public string Name => "inventory";

    public string Description => "an inventory YAML file into InventoryYaml and InventoryBuilder";

    public void Run(ReadOnlySpan<byte> input)
    {
        InventorySnapshot snapshot;
        try
        {
            snapshot = InventoryBuilder.Build(InventoryYaml.Load(Encoding.UTF8.GetString(input), "fuzz.yaml"));
        }
        catch (InventoryLoadException)
        {
            return;
        }

        // What the agent reads next: its own node's pods, each workload's policies and mode.
        foreach (var workload in snapshot.GetLocalEnrolledWorkloads("node1"))
        {
            _ = Authorizer.ModeFor(snapshot, workload);
        }
    }

    public IEnumerable<(string Name, byte[] Content)> Seeds()
    {
        yield return ("pods-and-namespace", Encoding.UTF8.GetBytes("""
            apiVersion: v1
            kind: Namespace
            metadata: {name: demo, labels: {weft.dev/mesh: enabled}}
            ---
            apiVersion: v1
            kind: Pod
            metadata:
              name: a1
              namespace: demo
              labels: {app: a}
              annotations: {weft.dev/netns: /var/run/netns/a1, weft.dev/fail-open: "true"}
            spec: {nodeName: node1, serviceAccountName: client}
            status: {podIP: 10.244.1.2, podIPs: [{ip: 10.244.1.2}, {ip: "fd00::1:2"}], hostIP: 10.0.0.1, phase: Running}
            ---
            """));
        yield return ("service-and-slice", Encoding.UTF8.GetBytes("""
            apiVersion: v1
            kind: Service
            metadata: {name: web, namespace: demo}
            spec:
              clusterIP: 10.96.0.10
              clusterIPs: [10.96.0.10]
              ports: [{name: http, port: 80, targetPort: 8080, protocol: TCP}]
            ---
            apiVersion: discovery.k8s.io/v1
            kind: EndpointSlice
            metadata: {name: web-1, namespace: demo, labels: {kubernetes.io/service-name: web}}
            addressType: IPv4
            endpoints: [{addresses: [10.244.2.2], conditions: {ready: true}}]
            ports: [{name: http, port: 8080, protocol: TCP}]
            """));
        yield return ("peer-authentication", Encoding.UTF8.GetBytes("""
            apiVersion: weft.dev/v1alpha1
            kind: PeerAuthentication
            metadata: {name: default, namespace: weft-system}
            spec: {mtls: {mode: STRICT}, portLevelMtls: {"8080": {mode: PERMISSIVE}}}
            """));
    }
}
