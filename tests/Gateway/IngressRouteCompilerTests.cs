using Weft.Gateway;

namespace Weft.Tests.Gateway;

/// <summary>
/// Ingress v1 matching, a table written from the Kubernetes documentation (concepts/services-networking/ingress:
/// "Examples" of path types, "Multiple matches", "Hostname wildcards", default backend, IngressClass).
/// </summary>
public class IngressRouteCompilerTests
{
    private static string Ingress(string paths, string? host = null, string className = "weft", string name = "ing", string extra = "") => $$"""
        ---
        apiVersion: networking.k8s.io/v1
        kind: Ingress
        metadata: {name: {{name}}, namespace: default}
        spec:
          ingressClassName: {{className}}
        {{extra}}
          rules:
          - {{(host is null ? "" : $"host: \"{host}\"\n    ")}}http:
              paths:
        {{GatewayYaml.Indent(paths, 6)}}

        """;

    private static string Path(string type, string path, string service) =>
        $"- {{pathType: {type}, path: \"{path}\", backend: {{service: {{name: {service}, port: {{number: 80}}}}}}}}";

    private static string Services(params string[] names) => string.Concat(names.Select(n => GatewayYaml.Service("default", n, 8080)));

    /// <summary>The Service a request reaches, or null for no route (404).</summary>
    private static string? Routed(RouteTable table, string host, string path) =>
        GatewayYaml.Match(table, host, path)?.Action.Backends.Single().ServiceName;

    // The "Examples" table of the Kubernetes Ingress documentation: kind, path(s) in the Ingress, request path, matches?
    [Theory]
    [InlineData("Prefix", "/", "/aaa/bbb", true)]
    [InlineData("Prefix", "/", "/", true)]
    [InlineData("Exact", "/foo", "/foo", true)]
    [InlineData("Exact", "/foo", "/bar", false)]
    [InlineData("Exact", "/foo", "/foo/", false)]
    [InlineData("Exact", "/foo/", "/foo", false)]
    [InlineData("Prefix", "/foo", "/foo", true)]
    [InlineData("Prefix", "/foo", "/foo/", true)]
    [InlineData("Prefix", "/foo/", "/foo", true)]
    [InlineData("Prefix", "/foo/", "/foo/", true)]
    [InlineData("Prefix", "/aaa/bb", "/aaa/bbb", false)]
    [InlineData("Prefix", "/aaa/bbb", "/aaa/bbb", true)]
    [InlineData("Prefix", "/aaa/bbb/", "/aaa/bbb", true)]
    [InlineData("Prefix", "/aaa/bbb", "/aaa/bbb/", true)]
    [InlineData("Prefix", "/aaa/bbb", "/aaa/bbb/ccc", true)]
    [InlineData("Prefix", "/aaa/bbb", "/aaa/bbbxyz", false)]
    [InlineData("Prefix", "/aaa", "/ccc", false)]
    [InlineData("ImplementationSpecific", "/aaa", "/aaa/ccc", true)]
    [InlineData("ImplementationSpecific", "/aaa", "/aaaccc", false)]
    public void PathType_MatchesAsTheKubernetesExamplesSay(string type, string path, string request, bool matches)
    {
        var table = GatewayYaml.Compile(Services("svc") + Ingress(Path(type, path, "svc")));

        Assert.Equal(matches ? "svc" : null, Routed(table, "any.example", request));
    }

    [Theory]
    [InlineData("/aaa/ccc", "aaa")] // Prefix / and /aaa: the longest matching path wins
    [InlineData("/aaa/bbb", "bbb")] // /, /aaa, /aaa/bbb
    [InlineData("/ccc", "root")]
    [InlineData("/aaa", "aaa")]
    public void LongestMatchingPath_Wins(string request, string expected)
    {
        var paths = string.Join('\n', Path("Prefix", "/", "root"), Path("Prefix", "/aaa", "aaa"), Path("Prefix", "/aaa/bbb", "bbb"));
        var table = GatewayYaml.Compile(Services("root", "aaa", "bbb") + Ingress(paths));

        Assert.Equal(expected, Routed(table, "x", request));
    }

    [Fact]
    public void ExactPath_BeatsPrefixOfTheSameLength()
    {
        var paths = string.Join('\n', Path("Prefix", "/foo", "prefix"), Path("Exact", "/foo", "exact"));
        var table = GatewayYaml.Compile(Services("prefix", "exact") + Ingress(paths));

        Assert.Equal("exact", Routed(table, "x", "/foo"));
        Assert.Equal("prefix", Routed(table, "x", "/foo/bar"));
        Assert.Equal("prefix", Routed(table, "x", "/foo/"));
    }

    [Theory]
    [InlineData("bar.foo.com", "wild")] // *.foo.com covers exactly one label
    [InlineData("baz.bar.foo.com", null)]
    [InlineData("foo.com", null)]
    [InlineData("exact.foo.com", "exact")] // an exact host beats the wildcard
    [InlineData("EXACT.foo.com", "exact")] // hosts compare case-insensitively
    public void WildcardHost_CoversOneLabel_AndExactHostWins(string host, string? expected)
    {
        var yaml = Services("wild", "exact")
            + Ingress(Path("Prefix", "/", "wild"), host: "*.foo.com", name: "wild")
            + Ingress(Path("Prefix", "/", "exact"), host: "exact.foo.com", name: "exact");
        var table = GatewayYaml.Compile(yaml);

        Assert.Equal(expected, Routed(table, host, "/"));
    }

    [Fact]
    public void DefaultBackend_TakesWhatNoRuleMatches()
    {
        var yaml = Services("app", "fallback")
            + Ingress(Path("Prefix", "/app", "app"), host: "a.example", extra: "  defaultBackend: {service: {name: fallback, port: {number: 80}}}");
        var table = GatewayYaml.Compile(yaml);

        Assert.Equal("app", Routed(table, "a.example", "/app/x"));
        Assert.Equal("fallback", Routed(table, "a.example", "/other"));
        Assert.Equal("fallback", Routed(table, "b.example", "/app"));
    }

    [Fact]
    public void OnlyIngressesOfOurClass_AreServed()
    {
        var yaml = Services("ours", "theirs", "classless")
            + """
            ---
            apiVersion: networking.k8s.io/v1
            kind: IngressClass
            metadata: {name: nginx}
            spec: {controller: k8s.io/ingress-nginx}

            """
            + Ingress(Path("Prefix", "/ours", "ours"), name: "ours")
            + Ingress(Path("Prefix", "/theirs", "theirs"), className: "nginx", name: "theirs")
            + Ingress(Path("Prefix", "/classless", "classless"), name: "classless").Replace("  ingressClassName: weft\n", "");
        var table = GatewayYaml.Compile(yaml);

        Assert.Equal("ours", Routed(table, "x", "/ours"));
        Assert.Null(Routed(table, "x", "/theirs"));
        Assert.Null(Routed(table, "x", "/classless")); // no default class: an Ingress without a class is not ours
    }

    [Fact]
    public void IngressWithoutClass_IsServed_WhenOurIngressClassIsTheDefault()
    {
        var yaml = Services("classless")
            + """
            ---
            apiVersion: networking.k8s.io/v1
            kind: IngressClass
            metadata:
              name: public
              annotations: {ingressclass.kubernetes.io/is-default-class: "true"}
            spec: {controller: weft.dev/gateway}

            """
            + Ingress(Path("Prefix", "/classless", "classless")).Replace("  ingressClassName: weft\n", "");
        var table = GatewayYaml.Compile(yaml);

        Assert.Equal("classless", Routed(table, "x", "/classless"));
    }

    [Fact]
    public void IngressClassOfAnotherName_WithOurController_IsServed()
    {
        var yaml = Services("svc")
            + """
            ---
            apiVersion: networking.k8s.io/v1
            kind: IngressClass
            metadata: {name: edge}
            spec: {controller: weft.dev/gateway}

            """
            + Ingress(Path("Prefix", "/", "svc"), className: "edge");

        Assert.Equal("svc", Routed(GatewayYaml.Compile(yaml), "x", "/"));
    }

    [Fact]
    public void MissingService_IsKept_AsABackendWithoutEndpoints_AndWarned()
    {
        var table = GatewayYaml.Compile(Ingress(Path("Prefix", "/", "ghost")));

        var backend = GatewayYaml.Match(table, "x", "/")!.Action.Backends.Single();
        Assert.Empty(backend.Endpoints);
        Assert.Null(backend.Invalid);
        Assert.Contains(table.Warnings, w => w.Contains("Service default/ghost not found", StringComparison.Ordinal));
    }

    [Fact]
    public void SamePathInTwoIngresses_TheOlderOneServes()
    {
        var older = Ingress(Path("Prefix", "/", "first"), name: "a").Replace("namespace: default}", "namespace: default, creationTimestamp: \"2025-01-01T00:00:00Z\"}");
        var newer = Ingress(Path("Prefix", "/", "second"), name: "b").Replace("namespace: default}", "namespace: default, creationTimestamp: \"2026-01-01T00:00:00Z\"}");
        var table = GatewayYaml.Compile(Services("first", "second") + newer + older);

        Assert.Equal("first", Routed(table, "x", "/"));
        Assert.Contains(table.Warnings, w => w.Contains("Ingress default/b", StringComparison.Ordinal));
    }

    [Theory]
    [InlineData("//aaa//bbb", "bbb")]
    [InlineData("/aaa/./bbb", "bbb")]
    public void RepeatedSlashes_AreRoutedAsOne(string request, string expected)
    {
        var paths = string.Join('\n', Path("Prefix", "/", "root"), Path("Prefix", "/aaa/bbb", "bbb"));
        var table = GatewayYaml.Compile(Services("root", "bbb") + Ingress(paths));

        // The server sees "/aaa/./bbb" already resolved by Kestrel; only "//" is the gateway's own normalization.
        Assert.Equal(expected, Routed(table, "x", request.Replace("/./", "/", StringComparison.Ordinal)));
    }
}
