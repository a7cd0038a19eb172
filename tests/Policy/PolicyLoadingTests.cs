using Weft.Inventory;
using Weft.Policy;

namespace Weft.Tests.Policy;

/// <summary>Policies arrive in the standalone inventory file next to pods and services, through the same loader.</summary>
public sealed class PolicyLoadingTests : IDisposable
{
    private readonly string _directory = Directory.CreateTempSubdirectory("weft-policy-").FullName;
    private readonly InventoryStore _store = new();

    public void Dispose() => Directory.Delete(_directory, recursive: true);

    private const string Pods = """
        apiVersion: v1
        kind: Namespace
        metadata: {name: demo, labels: {weft.dev/mesh: enabled}}
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: b1, namespace: demo, labels: {app: b}}
        spec: {nodeName: node2, serviceAccountName: b}
        status: {podIP: 10.244.2.2}

        """;

    private const string Policies = """
        ---
        apiVersion: weft.dev/v1alpha1
        kind: PeerAuthentication
        metadata: {name: default, namespace: weft-system}
        spec:
          mtls: {mode: STRICT}
        ---
        apiVersion: weft.dev/v1alpha1
        kind: AuthorizationPolicy
        metadata: {name: allow-sleep, namespace: demo}
        spec:
          selector:
            matchLabels: {app: b}
          action: ALLOW
          rules:
          - from:
            - source:
                principals: ["cluster.local/ns/demo/sa/sleep"]
            to:
            - operation:
                ports: ["8080"]

        """;

    private static readonly ConnectionAttributes Sleep = ConnectionAttributes.Mtls("spiffe://cluster.local/ns/demo/sa/sleep", System.Net.IPAddress.Parse("10.244.1.5"), 8080);
    private static readonly ConnectionAttributes Stranger = ConnectionAttributes.Mtls("spiffe://cluster.local/ns/demo/sa/stranger", System.Net.IPAddress.Parse("10.244.1.6"), 8080);

    private FileInventorySource Start(string content, FileInventorySourceOptions? options = null)
    {
        var path = Path.Combine(_directory, "inventory.yaml");
        File.WriteAllText(path, content);
        return FileInventorySource.Start(path, _store, options);
    }

    [Fact]
    public void FileWithBothKinds_LoadsPoliciesIntoTheSnapshot_WithoutExtraOptions()
    {
        using var source = Start(Pods + Policies);
        var snapshot = _store.Current;
        var b1 = snapshot.Workloads.Single();

        Assert.Empty(snapshot.Warnings);
        Assert.Equal<string>(["demo/allow-sleep"], snapshot.Policies.AuthorizationPolicies);
        Assert.Equal<string>(["weft-system/default"], snapshot.Policies.PeerAuthentications);
        Assert.Equal(MtlsMode.Strict, Authorizer.ModeFor(snapshot, b1));
        Assert.Equal(new AuthorizationDecision(true, "demo/allow-sleep", "allowed by demo/allow-sleep"), Authorizer.Evaluate(snapshot, b1, Sleep));
        Assert.False(Authorizer.Evaluate(snapshot, b1, Stranger).Allowed);
    }

    [Fact]
    public void MeshRootNamespace_IsConfigurable()
    {
        using var source = Start(Pods + Policies.Replace("weft-system", "mesh-root"), new FileInventorySourceOptions { MeshRootNamespace = "mesh-root" });
        var snapshot = _store.Current;

        Assert.Equal("mesh-root", snapshot.Policies.MeshRootNamespace);
        Assert.Equal(MtlsMode.Strict, Authorizer.ModeFor(snapshot, snapshot.Workloads.Single()));
    }

    [Fact]
    public void EditingAPolicy_IsPickedUpOnReload()
    {
        using var source = Start(Pods + Policies);
        var b1 = _store.Current.Workloads.Single();
        Assert.False(Authorizer.Evaluate(_store.Current, b1, Stranger).Allowed);

        File.WriteAllText(source.Path, Pods + Policies.Replace("sa/sleep\"]", "sa/sleep\", \"cluster.local/ns/demo/sa/stranger\"]"));
        Assert.True(source.Reload());

        Assert.True(Authorizer.Evaluate(_store.Current, b1, Stranger).Allowed);
    }

    [Theory]
    [InlineData("ipBlocks: [10.0.0.300/8]", "ipBlocks: '10.0.0.300/8' is not an IP address or CIDR block")]
    [InlineData("ipBlocks: [10.0.0.0/33]", "ipBlocks: '10.0.0.0/33' has a prefix length outside 0-32")]
    [InlineData("notIpBlocks: [\"010.0.0.1\"]", "notIpBlocks: '010.0.0.1' is not an IP address or CIDR block")]
    [InlineData("principals: [\"\"]", "principals: empty value not allowed")]
    public void InvalidAllowPolicy_IsReported_AndAllowsNothing(string badSource, string reason)
    {
        using var source = Start(Pods + Policies + """
            ---
            apiVersion: weft.dev/v1alpha1
            kind: AuthorizationPolicy
            metadata: {name: broken, namespace: demo}
            spec:
              rules: [{from: [{source: {
            """ + badSource + "}}]}]\n");
        var snapshot = _store.Current;

        Assert.Null(source.LastError); // the file as a whole still loads
        Assert.Equal($"AuthorizationPolicy demo/broken is invalid (rule 0: {reason}); it allows nothing until fixed", Assert.Single(snapshot.Warnings));
        Assert.Equal("allowed by demo/allow-sleep", Authorizer.Evaluate(snapshot, snapshot.Workloads.Single(), Sleep).Reason);
        Assert.Equal("no ALLOW policy matched (2 apply)", Authorizer.Evaluate(snapshot, snapshot.Workloads.Single(), Stranger).Reason);
    }

    [Theory]
    [InlineData("action: DENY\n  rules: [{to: [{operation: {ports: [\"80a\"]}}]}]", "rule 0: ports: '80a' is not a port number (1-65535)")]
    [InlineData("action: DENY\n  rules: [{to: [{operation: {notPorts: [\"70000\"]}}]}]", "rule 0: notPorts: '70000' is not a port number (1-65535)")]
    [InlineData("action: DENY\n  rules: [{from: []}]", "rule 0: `from` must not be empty")]
    [InlineData("action: DENY\n  rules: [{from: [{source: {}}]}]", "rule 0: `from.source` must not be empty")]
    [InlineData("action: REJECT\n  rules: [{}]", "action 'REJECT' is neither ALLOW nor DENY")]
    public void InvalidDenyPolicy_IsReported_AndDeniesEverythingItSelects(string spec, string reason)
    {
        using var source = Start(Pods + Policies + $"""
            ---
            apiVersion: weft.dev/v1alpha1
            kind: AuthorizationPolicy
            metadata: {"{"}name: broken, namespace: demo{"}"}
            spec:
              {spec}
            """);
        var snapshot = _store.Current;

        Assert.Null(source.LastError);
        Assert.Equal($"AuthorizationPolicy demo/broken is invalid ({reason}); it denies every connection to the workloads it selects until fixed", Assert.Single(snapshot.Warnings));
        Assert.Equal(new AuthorizationDecision(false, "demo/broken", "denied by demo/broken"), Authorizer.Evaluate(snapshot, snapshot.Workloads.Single(), Sleep));
    }

    [Fact]
    public void UnsupportedFeatures_AreNamedInWarnings()
    {
        using var source = Start(Pods + """
            ---
            apiVersion: weft.dev/v1alpha1
            kind: AuthorizationPolicy
            metadata: {name: audit, namespace: demo}
            spec: {action: AUDIT, rules: [{}]}
            ---
            apiVersion: weft.dev/v1alpha1
            kind: AuthorizationPolicy
            metadata: {name: http, namespace: demo}
            spec: {rules: [{to: [{operation: {paths: ["/admin"]}}]}]}
            ---
            apiVersion: weft.dev/v1alpha1
            kind: AuthorizationPolicy
            metadata: {name: ext-authz, namespace: demo}
            spec: {action: CUSTOM, provider: {name: opa}, rules: [{to: [{operation: {ports: ["9090"]}}]}]}
            ---
            apiVersion: weft.dev/v1alpha1
            kind: PeerAuthentication
            metadata: {name: default, namespace: demo}
            spec: {mtls: {mode: STRICTEST}}
            ---
            apiVersion: weft.dev/v1alpha1
            kind: PeerAuthentication
            metadata: {name: ports, namespace: demo}
            spec: {selector: {matchLabels: {app: b}}, portLevelMtls: {"8080": {mode: DISABLE}}}
            """);
        var snapshot = _store.Current;

        Assert.Equal(
        [
            "AuthorizationPolicy demo/audit ignored: action AUDIT only marks requests for an audit plugin, which Weft does not have",
            "AuthorizationPolicy demo/ext-authz: action CUSTOM (external authorization) is not supported; connections matching its rules are denied",
            "AuthorizationPolicy demo/http: rule 0 uses paths, which an L4 proxy cannot see: this ALLOW rule never matches",
            "PeerAuthentication demo/default is invalid (mtls.mode 'STRICTEST' is not UNSET, PERMISSIVE, STRICT or DISABLE); it is read as STRICT until fixed",
            "PeerAuthentication demo/ports: portLevelMtls is not supported and is ignored; spec.mtls.mode applies to every port",
        ], snapshot.Warnings.Order(StringComparer.Ordinal));
        Assert.Equal(MtlsMode.Strict, Authorizer.ModeFor(snapshot, snapshot.Workloads.Single()));
        Assert.False(Authorizer.Evaluate(snapshot, snapshot.Workloads.Single(), Sleep).Allowed);
        Assert.Equal("denied by demo/ext-authz", Authorizer.Evaluate(snapshot, snapshot.Workloads.Single(), Sleep with { DestinationPort = 9090 }).Reason);
    }
}
