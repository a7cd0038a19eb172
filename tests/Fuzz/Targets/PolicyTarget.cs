using System.Net;
using System.Text;
using Weft.Inventory;
using Weft.Policy;

namespace Weft.Fuzz;

/// <summary>
/// AuthorizationPolicy and PeerAuthentication objects (YAML) into the policy compiler, then decisions for a
/// spread of connections (mTLS and plaintext, IPv4 and IPv6, several ports) against a few workloads. The
/// compiler never throws on bad policies (they become warnings and fail closed); loading may refuse the file.
/// </summary>
internal sealed class PolicyTarget : IFuzzTarget
{
    private static readonly (string Namespace, IReadOnlyDictionary<string, string> Labels)[] Destinations =
    [
        ("demo", new Dictionary<string, string> { ["app"] = "b", ["version"] = "v1" }),
        ("weft-system", new Dictionary<string, string>()),
        ("other", new Dictionary<string, string> { ["app"] = "x" }),
    ];

    private static readonly ConnectionAttributes[] Connections =
    [
        ConnectionAttributes.Mtls("spiffe://cluster.local/ns/demo/sa/client", IPAddress.Parse("10.244.1.2"), 8080),
        ConnectionAttributes.Mtls("cluster.local/ns/other/sa/x", IPAddress.Parse("fd00::1:2"), 9999),
        ConnectionAttributes.Mtls("spiffe://td/ns//sa/", IPAddress.Parse("::ffff:10.0.0.1"), 1),
        new ConnectionAttributes("spiffe://cluster.local/sa/nons", "kube-system", IPAddress.IPv6Any, 65535),
        ConnectionAttributes.Plaintext(IPAddress.Parse("192.168.1.1"), 80),
        ConnectionAttributes.Plaintext(IPAddress.Any, 0),
    ];

    public string Name => "policy";

    public string Description => "AuthorizationPolicy/PeerAuthentication YAML into the policy compiler and decisions";

    public void Run(ReadOnlySpan<byte> input)
    {
        List<k8s.IKubernetesObject> objects;
        try
        {
            objects = InventoryYaml.Load(Encoding.UTF8.GetString(input), "policies.yaml");
        }
        catch (InventoryLoadException)
        {
            return;
        }

        var warnings = new List<string>();
        var policies = PolicyCompiler.Compile(objects.OfType<V1Alpha1AuthorizationPolicy>(), objects.OfType<V1Alpha1PeerAuthentication>(),
            PolicyKinds.DefaultMeshRootNamespace, warnings.Add);
        foreach (var (ns, labels) in Destinations)
        {
            foreach (var connection in Connections)
            {
                _ = PolicyDecisions.Evaluate(policies, ns, labels, connection);
            }
        }
    }

    public IEnumerable<(string Name, byte[] Content)> Seeds()
    {
        yield return ("allow-and-deny", Encoding.UTF8.GetBytes("""
            apiVersion: weft.dev/v1alpha1
            kind: AuthorizationPolicy
            metadata: {name: allow-client, namespace: demo}
            spec:
              selector: {matchLabels: {app: b}}
              action: ALLOW
              rules:
              - from: [{source: {principals: ["cluster.local/ns/demo/sa/*"], namespaces: [demo], ipBlocks: [10.244.0.0/16, "fd00::/8"]}}]
                to: [{operation: {ports: ["8080", "9090"], notPorts: ["9999"]}}]
            ---
            apiVersion: weft.dev/v1alpha1
            kind: AuthorizationPolicy
            metadata: {name: deny-other, namespace: weft-system}
            spec:
              action: DENY
              rules:
              - from: [{source: {notNamespaces: [demo], notIpBlocks: [10.244.1.0/24]}}]
            """));
        yield return ("invalid-fails-closed", Encoding.UTF8.GetBytes("""
            apiVersion: weft.dev/v1alpha1
            kind: AuthorizationPolicy
            metadata: {name: bad, namespace: demo}
            spec:
              action: AUDIT
              rules:
              - from: [{source: {ipBlocks: [10.0.0.0/33], remoteIpBlocks: [1.2.3.4]}}]
                to: [{operation: {ports: ["http"], methods: [GET], paths: ["/x*"], hosts: ["*.example"]}}]
                when: [{key: source.ip, values: [10.0.0.1], notValues: ["*"]}]
            ---
            apiVersion: weft.dev/v1alpha1
            kind: AuthorizationPolicy
            metadata: {name: empty, namespace: other}
            spec: {}
            """));
        yield return ("peer-authentications", Encoding.UTF8.GetBytes("""
            apiVersion: weft.dev/v1alpha1
            kind: PeerAuthentication
            metadata: {name: default, namespace: weft-system, creationTimestamp: "2024-01-01T00:00:00Z"}
            spec: {mtls: {mode: STRICT}}
            ---
            apiVersion: weft.dev/v1alpha1
            kind: PeerAuthentication
            metadata: {name: b, namespace: demo}
            spec: {selector: {matchLabels: {app: b}}, mtls: {mode: PERMISSIVE}, portLevelMtls: {"8080": {mode: DISABLE}}}
            """));
    }
}
