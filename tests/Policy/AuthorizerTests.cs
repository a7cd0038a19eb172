using System.Net;
using Weft.Inventory;
using Weft.Policy;

namespace Weft.Tests.Policy;

/// <summary>
/// Istio's L4 authorization semantics, one row per behaviour: a small cluster (demo/b1, demo/c1, other/d1), the
/// policies of the row on top, and the decision for one connection to one pod.
/// </summary>
public class AuthorizerTests
{
    private const string Cluster = """
        apiVersion: v1
        kind: Namespace
        metadata: {name: demo, labels: {weft.dev/mesh: enabled}}
        ---
        apiVersion: v1
        kind: Namespace
        metadata: {name: other, labels: {weft.dev/mesh: enabled}}
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: b1, namespace: demo, labels: {app: b, version: v1}}
        spec: {nodeName: node2, serviceAccountName: b}
        status: {podIP: 10.244.2.2}
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: c1, namespace: demo, labels: {app: c}}
        spec: {nodeName: node2, serviceAccountName: c}
        status: {podIP: 10.244.2.3}
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: d1, namespace: other, labels: {app: b}}
        spec: {nodeName: node2, serviceAccountName: d}
        status: {podIP: 10.244.3.2}

        """;

    // Who connects: a meshed client in demo, one in other, and a plaintext client outside the mesh.
    private static readonly IPAddress SleepIp = IPAddress.Parse("10.244.1.5");
    private static readonly IPAddress OutsideIp = IPAddress.Parse("192.168.1.10");
    private static ConnectionAttributes Sleep(int port = 8080) => ConnectionAttributes.Mtls("spiffe://cluster.local/ns/demo/sa/sleep", SleepIp, port);
    private static ConnectionAttributes OtherClient(int port = 8080) => ConnectionAttributes.Mtls("spiffe://cluster.local/ns/other/sa/client", IPAddress.Parse("10.244.3.9"), port);
    private static ConnectionAttributes Plaintext(int port = 8080) => ConnectionAttributes.Plaintext(OutsideIp, port);

    public sealed record Case(string Policies, string Destination, ConnectionAttributes Connection, bool Allowed, string Reason);

    private static string Policy(string name, string ns, string spec) => $"""
        ---
        apiVersion: weft.dev/v1alpha1
        kind: AuthorizationPolicy
        metadata: {"{"}name: {name}, namespace: {ns}{"}"}
        spec:
        {Indent(spec)}

        """;

    private static string Indent(string text) => string.Join('\n', text.Split('\n').Select(l => "  " + l));

    private const string AllowAll = "rules: [{}]";
    private const string DenySleep = """
        action: DENY
        rules: [{from: [{source: {principals: ["cluster.local/ns/demo/sa/sleep"]}}]}]
        """;

    private static readonly Dictionary<string, Case> Cases = new()
    {
        // Scope and defaults
        ["no policy: allowed"] = new("", "demo/b1", Sleep(), true, "no authorization policy applies"),
        ["ALLOW with no rules (spec: {}) allows nothing"] = new(Policy("allow-nothing", "demo", "{}"), "demo/b1", Sleep(), false, "no ALLOW policy matched (1 apply)"),
        ["ALLOW with one empty rule (rules: [{}]) allows all"] = new(Policy("allow-all", "demo", AllowAll), "demo/b1", Plaintext(), true, "allowed by demo/allow-all"),
        ["DENY wins over a matching ALLOW"] = new(Policy("allow-all", "demo", AllowAll) + Policy("deny-sleep", "demo", DenySleep), "demo/b1", Sleep(), false, "denied by demo/deny-sleep"),
        ["DENY that does not match, and no ALLOW: allowed"] = new(Policy("deny-sleep", "demo", DenySleep), "demo/b1", OtherClient(), true, "no ALLOW policy applies"),
        ["namespace policy does not reach another namespace"] = new(Policy("allow-nothing", "demo", "{}"), "other/d1", Sleep(), true, "no authorization policy applies"),
        ["selector: applies to matching labels"] = new(Policy("c-nothing", "demo", "selector: {matchLabels: {app: c}}"), "demo/c1", Sleep(), false, "no ALLOW policy matched (1 apply)"),
        ["selector: other workloads untouched"] = new(Policy("c-nothing", "demo", "selector: {matchLabels: {app: c}}"), "demo/b1", Sleep(), true, "no authorization policy applies"),
        ["mesh root namespace, no selector: every namespace"] = new(Policy("mesh-nothing", "weft-system", "{}"), "other/d1", Sleep(), false, "no ALLOW policy matched (1 apply)"),
        ["mesh root namespace with selector: matching workloads in every namespace"] = new(Policy("deny-b", "weft-system", "selector: {matchLabels: {app: b}}\naction: DENY\nrules: [{}]"), "other/d1", Sleep(), false, "denied by weft-system/deny-b"),
        ["mesh root namespace with selector: others untouched"] = new(Policy("deny-b", "weft-system", "selector: {matchLabels: {app: b}}\naction: DENY\nrules: [{}]"), "demo/c1", Sleep(), true, "no authorization policy applies"),
        ["mesh DENY beats a namespace ALLOW"] = new(Policy("allow-all", "demo", AllowAll) + Policy("deny-sleep", "weft-system", DenySleep), "demo/b1", Sleep(), false, "denied by weft-system/deny-sleep"),
        ["mesh ALLOW-nothing plus namespace ALLOW-all: allowed"] = new(Policy("mesh-nothing", "weft-system", "{}") + Policy("allow-all", "demo", AllowAll), "demo/b1", Sleep(), true, "allowed by demo/allow-all"),

        // Principals and namespaces (mTLS identity)
        ["principal exact match"] = new(Policy("p", "demo", """rules: [{from: [{source: {principals: ["cluster.local/ns/demo/sa/sleep"]}}]}]"""), "demo/b1", Sleep(), true, "allowed by demo/p"),
        ["principal exact mismatch"] = new(Policy("p", "demo", """rules: [{from: [{source: {principals: ["cluster.local/ns/demo/sa/sleep"]}}]}]"""), "demo/b1", OtherClient(), false, "no ALLOW policy matched (1 apply)"),
        ["principal prefix wildcard"] = new(Policy("p", "demo", """rules: [{from: [{source: {principals: ["cluster.local/ns/demo/*"]}}]}]"""), "demo/b1", Sleep(), true, "allowed by demo/p"),
        ["principal suffix wildcard"] = new(Policy("p", "demo", """rules: [{from: [{source: {principals: ["*/sa/client"]}}]}]"""), "demo/b1", OtherClient(), true, "allowed by demo/p"),
        ["notPrincipals excludes"] = new(Policy("p", "demo", """rules: [{from: [{source: {notPrincipals: ["*/sa/sleep"]}}]}]"""), "demo/b1", Sleep(), false, "no ALLOW policy matched (1 apply)"),
        ["namespaces match from the peer's identity"] = new(Policy("p", "demo", """rules: [{from: [{source: {namespaces: ["other"]}}]}]"""), "demo/b1", OtherClient(), true, "allowed by demo/p"),
        ["notNamespaces excludes"] = new(Policy("p", "demo", """rules: [{from: [{source: {notNamespaces: ["other"]}}]}]"""), "demo/b1", OtherClient(), false, "no ALLOW policy matched (1 apply)"),

        // Plaintext: mTLS-only fields compare to an empty value (ISTIO-SECURITY-2021-004)
        ["plaintext never matches principals, not even *"] = new(Policy("p", "demo", """rules: [{from: [{source: {principals: ["*"]}}]}]"""), "demo/b1", Plaintext(), false, "no ALLOW policy matched (1 apply)"),
        ["plaintext never matches namespaces"] = new(Policy("p", "demo", """rules: [{from: [{source: {namespaces: ["*"]}}]}]"""), "demo/b1", Plaintext(), false, "no ALLOW policy matched (1 apply)"),
        ["plaintext matches notPrincipals: DENY notPrincipals * refuses it"] = new(Policy("require-mtls", "demo", "action: DENY\n" + """rules: [{from: [{source: {notPrincipals: ["*"]}}]}]"""), "demo/b1", Plaintext(), false, "denied by demo/require-mtls"),
        ["mTLS passes DENY notPrincipals *"] = new(Policy("require-mtls", "demo", "action: DENY\n" + """rules: [{from: [{source: {notPrincipals: ["*"]}}]}]"""), "demo/b1", Sleep(), true, "no ALLOW policy applies"),
        ["plaintext matches an ALLOW notNamespaces, as in Istio"] = new(Policy("p", "demo", """rules: [{from: [{source: {notNamespaces: ["other"]}}]}]"""), "demo/b1", Plaintext(), true, "allowed by demo/p"),

        // Ports
        ["ports: listed port allowed"] = new(Policy("p", "demo", """rules: [{to: [{operation: {ports: ["8080"]}}]}]"""), "demo/b1", Sleep(8080), true, "allowed by demo/p"),
        ["ports: other port denied"] = new(Policy("p", "demo", """rules: [{to: [{operation: {ports: ["8080"]}}]}]"""), "demo/b1", Sleep(9090), false, "no ALLOW policy matched (1 apply)"),
        ["notPorts in a DENY: other ports denied"] = new(Policy("only-8080", "demo", "action: DENY\n" + """rules: [{to: [{operation: {notPorts: ["8080"]}}]}]"""), "demo/b1", Sleep(9090), false, "denied by demo/only-8080"),
        ["notPorts in a DENY: the excluded port passes"] = new(Policy("only-8080", "demo", "action: DENY\n" + """rules: [{to: [{operation: {notPorts: ["8080"]}}]}]"""), "demo/b1", Sleep(8080), true, "no ALLOW policy applies"),

        // Source addresses
        ["ipBlocks CIDR contains the source"] = new(Policy("p", "demo", "rules: [{from: [{source: {ipBlocks: [10.244.0.0/16]}}]}]"), "demo/b1", Sleep(), true, "allowed by demo/p"),
        ["ipBlocks CIDR does not contain the source"] = new(Policy("p", "demo", "rules: [{from: [{source: {ipBlocks: [10.244.0.0/16]}}]}]"), "demo/b1", Plaintext(), false, "no ALLOW policy matched (1 apply)"),
        ["ipBlocks single IP"] = new(Policy("deny-outside", "demo", "action: DENY\nrules: [{from: [{source: {ipBlocks: [192.168.1.10]}}]}]"), "demo/b1", Plaintext(), false, "denied by demo/deny-outside"),
        ["notIpBlocks excludes"] = new(Policy("p", "demo", "rules: [{from: [{source: {notIpBlocks: [10.244.1.0/24]}}]}]"), "demo/b1", Sleep(), false, "no ALLOW policy matched (1 apply)"),
        ["IPv4-mapped IPv6 source matches an IPv4 block"] = new(Policy("p", "demo", "rules: [{from: [{source: {ipBlocks: [10.244.1.0/24]}}]}]"), "demo/b1",
            ConnectionAttributes.Mtls("spiffe://cluster.local/ns/demo/sa/sleep", IPAddress.Parse("::ffff:10.244.1.5"), 8080), true, "allowed by demo/p"),

        // Combining: fields ANDed, list entries ORed, rules ORed, any ALLOW policy
        ["source fields are ANDed"] = new(Policy("p", "demo", """rules: [{from: [{source: {principals: ["*/sa/sleep"], ipBlocks: [10.0.0.0/8]}}]}]"""), "demo/b1",
            ConnectionAttributes.Mtls("spiffe://cluster.local/ns/demo/sa/sleep", OutsideIp, 8080), false, "no ALLOW policy matched (1 apply)"),
        ["from and to are ANDed"] = new(Policy("p", "demo", """rules: [{from: [{source: {namespaces: [demo]}}], to: [{operation: {ports: ["80"]}}]}]"""), "demo/b1", Sleep(8080), false, "no ALLOW policy matched (1 apply)"),
        ["from entries are ORed"] = new(Policy("p", "demo", """rules: [{from: [{source: {namespaces: [nope]}}, {source: {namespaces: [other]}}]}]"""), "demo/b1", OtherClient(), true, "allowed by demo/p"),
        ["rules are ORed"] = new(Policy("p", "demo", """rules: [{to: [{operation: {ports: ["80"]}}]}, {to: [{operation: {ports: ["8080"]}}]}]"""), "demo/b1", Sleep(8080), true, "allowed by demo/p"),
        ["one of several ALLOW policies is enough"] = new(Policy("a-ports", "demo", """rules: [{to: [{operation: {ports: ["80"]}}]}]""") + Policy("b-other", "demo", """rules: [{from: [{source: {namespaces: [other]}}]}]"""), "demo/b1", OtherClient(), true, "allowed by demo/b-other"),
        ["no ALLOW among several matches: the count says how many applied"] = new(Policy("a-ports", "demo", """rules: [{to: [{operation: {ports: ["80"]}}]}]""") + Policy("b-other", "demo", """rules: [{from: [{source: {namespaces: [other]}}]}]"""), "demo/b1", Sleep(), false, "no ALLOW policy matched (2 apply)"),

        // HTTP-only fields at L4
        ["ALLOW rule with HTTP fields never matches"] = new(Policy("get-only", "demo", "rules: [{to: [{operation: {methods: [GET]}}]}]"), "demo/b1", Sleep(), false, "no ALLOW policy matched (1 apply)"),
        ["DENY rule with HTTP fields treats them as matching"] = new(Policy("no-post", "demo", "action: DENY\n" + """rules: [{to: [{operation: {methods: [POST], ports: ["8080"]}}]}]"""), "demo/b1", Sleep(8080), false, "denied by demo/no-post"),
    };

    public static TheoryData<string> CaseNames() => [.. Cases.Keys];

    [Theory]
    [MemberData(nameof(CaseNames))]
    public void Evaluate(string name)
    {
        var (policies, destination, connection, allowed, reason) = Cases[name];
        var snapshot = Build(policies);
        Assert.Empty(snapshot.Warnings.Where(w => !w.Contains("L4 proxy cannot see", StringComparison.Ordinal)));

        var decision = Authorizer.Evaluate(snapshot, Workload(snapshot, destination), connection);

        Assert.Equal((allowed, reason), (decision.Allowed, decision.Reason));
        Assert.Equal(reason.StartsWith("allowed by ", StringComparison.Ordinal) || reason.StartsWith("denied by ", StringComparison.Ordinal)
            ? reason[(reason.IndexOf(" by ", StringComparison.Ordinal) + 4)..] : null, decision.Policy);
    }

    [Fact]
    public void PolicyDecisions_OverNamespaceAndLabelsAlone_DecideAsForTheWorkload()
    {
        // Policy knows no inventory: the same namespace and labels, copied out of the workload, give the same decision.
        foreach (var (name, (policies, destination, connection, allowed, reason)) in Cases)
        {
            var snapshot = Build(policies);
            var workload = Workload(snapshot, destination);

            var decision = PolicyDecisions.Evaluate(snapshot.Policies, workload.Namespace, new Dictionary<string, string>(workload.Labels), connection);

            Assert.True((allowed, reason) == (decision.Allowed, decision.Reason), $"{name}: {decision}");
            Assert.Equal(Authorizer.ModeFor(snapshot, workload), PolicyDecisions.ModeFor(snapshot.Policies, workload.Namespace, new Dictionary<string, string>(workload.Labels)));
        }
    }

    [Fact]
    public void Principal_WithOrWithoutScheme_IsTheSameIdentity()
    {
        var snapshot = Build(Policy("p", "demo", """rules: [{from: [{source: {principals: ["cluster.local/ns/demo/sa/sleep"], namespaces: [demo]}}]}]"""));
        var b1 = Workload(snapshot, "demo/b1");

        Assert.True(Authorizer.Evaluate(snapshot, b1, new ConnectionAttributes("cluster.local/ns/demo/sa/sleep", null, SleepIp, 8080)).Allowed);
        Assert.True(Authorizer.Evaluate(snapshot, b1, new ConnectionAttributes("spiffe://cluster.local/ns/demo/sa/sleep", "demo", SleepIp, 8080)).Allowed);
        Assert.False(Authorizer.Evaluate(snapshot, b1, new ConnectionAttributes("spiffe://cluster.local/ns/demo/sa/sleep", "other", SleepIp, 8080)).Allowed);
    }

    [Fact]
    public void Evaluate_AllocatesNothing_WhenAllowedOrDenied()
    {
        var snapshot = Build(
            Policy("deny-outside", "weft-system", "action: DENY\nrules: [{from: [{source: {ipBlocks: [192.168.0.0/16]}}]}]")
            + Policy("allow-demo", "demo", """rules: [{from: [{source: {principals: ["cluster.local/ns/demo/*"], notIpBlocks: ["fd00::/8"]}}], to: [{operation: {ports: ["8080", "9090"]}}]}]"""));
        var b1 = Workload(snapshot, "demo/b1");
        var allowed = Sleep();
        var denied = OtherClient();
        var plaintext = Plaintext();

        void Decide()
        {
            Assert.True(Authorizer.Evaluate(snapshot, b1, allowed).Allowed);
            Assert.False(Authorizer.Evaluate(snapshot, b1, denied).Allowed);
            Assert.False(Authorizer.Evaluate(snapshot, b1, plaintext).Allowed);
        }

        Decide(); // warm up
        var before = GC.GetAllocatedBytesForCurrentThread();
        for (var i = 0; i < 1000; i++)
        {
            Decide();
        }

        Assert.Equal(0, GC.GetAllocatedBytesForCurrentThread() - before);
    }

    internal static InventorySnapshot Build(string policies) =>
        InventoryBuilder.Build(InventoryYaml.Load(Cluster + policies, "test.yaml"));

    internal static Workload Workload(InventorySnapshot snapshot, string nsName) =>
        snapshot.Workloads.Single(w => w.ToString() == nsName);
}
