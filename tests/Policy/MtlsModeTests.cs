using Weft.Inventory;
using Weft.Policy;

namespace Weft.Tests.Policy;

/// <summary>PeerAuthentication resolution: the most specific policy that sets a mode wins; nothing at all means PERMISSIVE.</summary>
public class MtlsModeTests
{
    private static string Peer(string name, string ns, string spec, string? created = null) => $"""
        ---
        apiVersion: weft.dev/v1alpha1
        kind: PeerAuthentication
        metadata: {"{"}name: {name}, namespace: {ns}{(created is null ? "" : $", creationTimestamp: \"{created}\"")}{"}"}
        spec: {spec}

        """;

    private static MtlsMode ModeOf(string policies, string workload)
    {
        var snapshot = AuthorizerTests.Build(policies);
        Assert.Empty(snapshot.Warnings);
        return Authorizer.ModeFor(snapshot, AuthorizerTests.Workload(snapshot, workload));
    }

    [Fact]
    public void NoPeerAuthentication_IsPermissive() =>
        Assert.Equal(MtlsMode.Permissive, ModeOf("", "demo/b1"));

    [Fact]
    public void MeshWideStrict_AppliesToEveryNamespace()
    {
        var mesh = Peer("default", "weft-system", "{mtls: {mode: STRICT}}");
        Assert.Equal(MtlsMode.Strict, ModeOf(mesh, "demo/b1"));
        Assert.Equal(MtlsMode.Strict, ModeOf(mesh, "other/d1"));
    }

    [Fact]
    public void NamespacePermissive_OverridesMeshStrict_OnlyInThatNamespace()
    {
        var policies = Peer("default", "weft-system", "{mtls: {mode: STRICT}}") + Peer("default", "demo", "{mtls: {mode: PERMISSIVE}}");
        Assert.Equal(MtlsMode.Permissive, ModeOf(policies, "demo/b1"));
        Assert.Equal(MtlsMode.Strict, ModeOf(policies, "other/d1"));
    }

    [Fact]
    public void WorkloadSelector_OverridesItsNamespace_ForTheWorkloadsItSelects()
    {
        var policies = Peer("default", "demo", "{mtls: {mode: PERMISSIVE}}") + Peer("b-strict", "demo", "{selector: {matchLabels: {app: b}}, mtls: {mode: STRICT}}");
        Assert.Equal(MtlsMode.Strict, ModeOf(policies, "demo/b1"));
        Assert.Equal(MtlsMode.Permissive, ModeOf(policies, "demo/c1"));
        Assert.Equal(MtlsMode.Permissive, ModeOf(policies, "other/d1")); // same labels, other namespace
    }

    [Fact]
    public void WorkloadPermissive_OverridesMeshStrict()
    {
        var policies = Peer("default", "weft-system", "{mtls: {mode: STRICT}}") + Peer("c-open", "demo", "{selector: {matchLabels: {app: c}}, mtls: {mode: PERMISSIVE}}");
        Assert.Equal(MtlsMode.Permissive, ModeOf(policies, "demo/c1"));
        Assert.Equal(MtlsMode.Strict, ModeOf(policies, "demo/b1"));
    }

    [Fact]
    public void UnsetMode_InheritsFromTheWiderScope()
    {
        var policies = Peer("default", "weft-system", "{mtls: {mode: STRICT}}")
            + Peer("default", "demo", "{mtls: {mode: UNSET}}")
            + Peer("b-unset", "demo", "{selector: {matchLabels: {app: b}}}");
        Assert.Equal(MtlsMode.Strict, ModeOf(policies, "demo/b1"));
    }

    [Fact]
    public void MeshRootSelector_SelectsInEveryNamespace()
    {
        var policies = Peer("b-strict", "weft-system", "{selector: {matchLabels: {app: b}}, mtls: {mode: STRICT}}");
        Assert.Equal(MtlsMode.Strict, ModeOf(policies, "other/d1"));
        Assert.Equal(MtlsMode.Strict, ModeOf(policies, "demo/b1"));
        Assert.Equal(MtlsMode.Permissive, ModeOf(policies, "demo/c1"));
    }

    [Fact]
    public void TwoPoliciesAtOneLevel_TheOldestWins()
    {
        var policies = Peer("a-new", "demo", "{mtls: {mode: PERMISSIVE}}", "2025-06-01T00:00:00Z")
            + Peer("z-old", "demo", "{mtls: {mode: STRICT}}", "2024-01-01T00:00:00Z");
        Assert.Equal(MtlsMode.Strict, ModeOf(policies, "demo/b1"));
    }
}
