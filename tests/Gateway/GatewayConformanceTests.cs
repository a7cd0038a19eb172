using System.Text.Json.Nodes;
using Weft.Gateway;
using static Weft.Tests.Gateway.GatewayOnFakeCluster;

namespace Weft.Tests.Gateway;

/// <summary>
/// The core scenarios of the upstream Gateway API conformance suite (gateway-api/conformance/tests) about
/// Gateways, GatewayClasses and what a listener admits, under their upstream names, with the upstream object
/// names, namespaces and expectations: <c>weft gateway</c> in Kubernetes mode against the wire-level fake API
/// server (status as the upstream suite reads it) with real echo backends (traffic as a client sees it).
/// </summary>
public class GatewayConformanceTests
{
    private const string Infra = "gateway-conformance-infra";
    private const string WebBackend = "gateway-conformance-web-backend";

    private const string GatewayClass = """
        ---
        apiVersion: gateway.networking.k8s.io/v1
        kind: GatewayClass
        metadata: {name: weft}
        spec: {controllerName: weft.dev/gateway}

        """;

    private static string Gateway(string name, string listeners) => $$"""
        ---
        apiVersion: gateway.networking.k8s.io/v1
        kind: Gateway
        metadata: {name: {{name}}, namespace: gateway-conformance-infra}
        spec:
          gatewayClassName: weft
          listeners:
        {{GatewayYaml.Indent(listeners, 2)}}

        """;

    private static string Route(string name, string parent, string backendRefs, string hostnames = "[]", string ns = Infra) => $$"""
        ---
        apiVersion: gateway.networking.k8s.io/v1
        kind: HTTPRoute
        metadata: {name: {{name}}, namespace: {{ns}}}
        spec:
          parentRefs: [{{parent}}]
          hostnames: {{hostnames}}
          rules:
          - backendRefs: [{{backendRefs}}]

        """;

    private static string Grant(string name, string ns, string from, string to) => $$"""
        ---
        apiVersion: gateway.networking.k8s.io/v1beta1
        kind: ReferenceGrant
        metadata: {name: {{name}}, namespace: {{ns}}}
        spec:
          from: [{{from}}]
          to: [{{to}}]

        """;

    /// <summary>The Secret (kubernetes.io/tls) the upstream manifests name, valid for the names given.</summary>
    private static string Certificate(string ns, string name, params string[] names) => GatewayLoopback.TlsSecret(ns, name, names).SecretYaml;

    private static async Task<GatewayOnFakeCluster> StartAsync(string objects, string gatewayClass = GatewayClass)
    {
        var cluster = new GatewayOnFakeCluster();
        try
        {
            await cluster.ConformanceBackendsAsync();
            cluster.Apply(gatewayClass + objects);
            await cluster.StartAsync();
            return cluster;
        }
        catch
        {
            await cluster.DisposeAsync();
            throw;
        }
    }

    /// <summary>What the upstream suite expects of one listener's status (GatewayStatusMustHaveListeners).</summary>
    /// <param name="Conditions">"Type Status Reason" (Reason may be left out: any reason).</param>
    private sealed record Listener(string Name, bool HttpRoute, int AttachedRoutes, params string[] Conditions);

    /// <summary>
    /// Waits until the Gateway's status lists exactly these listeners, each with its supportedKinds, attachedRoutes
    /// and conditions, every condition observing the Gateway's generation; returns the Gateway.
    /// </summary>
    private static Task<JsonObject> ListenersAsync(GatewayOnFakeCluster cluster, string gateway, params Listener[] expected) =>
        cluster.WaitForObjectAsync<GatewayResource>(Infra, gateway, g =>
        {
            var generation = g["metadata"]?["generation"]?.GetValue<long>();
            var actual = g["status"]?["listeners"] as JsonArray;
            return actual is not null && actual.Count == expected.Length && expected.All(e =>
                actual.FirstOrDefault(l => l?["name"]?.GetValue<string>() == e.Name) is { } listener
                && listener["supportedKinds"]!.ToJsonString() == (e.HttpRoute ? """[{"group":"gateway.networking.k8s.io","kind":"HTTPRoute"}]""" : "[]")
                && listener["attachedRoutes"]?.GetValue<int>() == e.AttachedRoutes
                && (listener["conditions"] as JsonArray)!.All(c => c?["observedGeneration"]?.GetValue<long>() == generation)
                && e.Conditions.All(expectedCondition =>
                {
                    var parts = expectedCondition.Split(' ');
                    return Condition(listener["conditions"], parts[0]) is { } found
                        && found.StartsWith($"{parts[1]}/{(parts.Length > 2 ? parts[2] + "/" : "")}", StringComparison.Ordinal);
                }));
        });

    /// <summary>Every condition of the Gateway itself observes its generation (GatewayMustHaveLatestConditions); Accepted and Programmed hold.</summary>
    private static Task<JsonObject> LatestConditionsAsync(GatewayOnFakeCluster cluster, string gateway, long generation) =>
        cluster.WaitForObjectAsync<GatewayResource>(Infra, gateway, g =>
            g["metadata"]?["generation"]?.GetValue<long>() == generation
            && g["status"]?["conditions"] is JsonArray { Count: > 0 } conditions
            && conditions.All(c => c?["observedGeneration"]?.GetValue<long>() == generation)
            && Condition(conditions, "Accepted") == $"True/Accepted/{generation}"
            && Condition(conditions, "Programmed") == $"True/Programmed/{generation}");

    [Fact]
    public async Task GatewayClassObservedGenerationBump()
    {
        var gatewayClass = GatewayClass.Replace("spec: {controllerName: weft.dev/gateway}", "spec: {controllerName: weft.dev/gateway, description: old}", StringComparison.Ordinal);
        await using var cluster = await StartAsync("", gatewayClass);
        var before = await cluster.WaitForObjectAsync<GatewayClassResource>(null, "weft", c => Condition(c["status"]?["conditions"], "Accepted") == "True/Accepted/1");

        cluster.Apply(gatewayClass.Replace("description: old", "description: new", StringComparison.Ordinal));

        var after = await cluster.WaitForObjectAsync<GatewayClassResource>(null, "weft", c => Condition(c["status"]?["conditions"], "Accepted") == "True/Accepted/2");
        Assert.Equal(1, before["metadata"]!["generation"]!.GetValue<long>());
        Assert.Equal(2, after["metadata"]!["generation"]!.GetValue<long>());
        Assert.All(after["status"]!["conditions"]!.AsArray(), c => Assert.Equal(2, c!["observedGeneration"]!.GetValue<long>()));
    }

    [Fact]
    public async Task GatewayObservedGenerationBump()
    {
        const string listener = "- {name: http, port: 80, protocol: HTTP}";
        await using var cluster = await StartAsync(Gateway("gateway-observed-generation-bump", listener));
        await LatestConditionsAsync(cluster, "gateway-observed-generation-bump", 1);

        cluster.Apply(Gateway("gateway-observed-generation-bump", listener + "\n- {name: alternate, hostname: foo.com, port: 80, protocol: HTTP, allowedRoutes: {namespaces: {from: All}}}"));

        await LatestConditionsAsync(cluster, "gateway-observed-generation-bump", 2);
        await ListenersAsync(cluster, "gateway-observed-generation-bump",
            new Listener("http", true, 0, "Accepted True", "ResolvedRefs True", "Programmed True"),
            new Listener("alternate", true, 0, "Accepted True", "ResolvedRefs True", "Programmed True"));
    }

    [Fact]
    public async Task GatewayInvalidRouteKind()
    {
        var objects = Gateway("gateway-only-invalid-route-kind", "- {name: http, port: 80, protocol: HTTP, allowedRoutes: {namespaces: {from: All}, kinds: [{kind: InvalidRoute}]}}")
            + Gateway("gateway-supported-and-invalid-route-kind", "- {name: http, port: 80, protocol: HTTP, allowedRoutes: {namespaces: {from: All}, kinds: [{kind: InvalidRoute}, {kind: HTTPRoute}]}}")
            + Route("gateway-supported-and-invalid-route-kind-control", "{name: gateway-supported-and-invalid-route-kind, sectionName: http}", "{name: infra-backend-v1, port: 80}", "[supported-route-kind.example.com]");
        await using var cluster = await StartAsync(objects);

        await ListenersAsync(cluster, "gateway-only-invalid-route-kind", new Listener("http", false, 0, "ResolvedRefs False InvalidRouteKinds"));

        // HTTPRoute is among the kinds: it stays supported, and the control route attaches and is served (attachment
        // is decided by allowedRoutes and parentRefs alone, whatever the listener's own conditions).
        await ListenersAsync(cluster, "gateway-supported-and-invalid-route-kind", new Listener("http", true, 1, "ResolvedRefs False InvalidRouteKinds"));
        await cluster.AnswersAsync("supported-route-kind.example.com", "/", "infra-backend-v1");
    }

    [Fact]
    public async Task GatewayInvalidTLSConfiguration()
    {
        // Four Gateways, each with a plain listener serving a control route and an HTTPS listener whose certificateRef
        // is unusable: a Secret that does not exist, a ref of another group, of another kind, a Secret that is not PEM.
        var cases = new[]
        {
            ("gateway-certificate-nonexistent-secret", "{group: \"\", kind: Secret, name: nonexistent-certificate}", "nonexistent-certificate.example.com"),
            ("gateway-certificate-unsupported-group", "{group: wrong.group.company.io, kind: Secret, name: tls-validity-checks-certificate}", "unsupported-group-certificate.example.com"),
            ("gateway-certificate-unsupported-kind", "{group: \"\", kind: WrongKind, name: tls-validity-checks-certificate}", "unsupported-kind-certificate.example.com"),
            ("gateway-certificate-malformed-secret", "{group: \"\", kind: Secret, name: malformed-certificate}", "malformed-certificate.example.com"),
        };
        var objects = Certificate(Infra, "tls-validity-checks-certificate", "tls-validity.example.com") + """
            ---
            apiVersion: v1
            kind: Secret
            metadata: {name: malformed-certificate, namespace: gateway-conformance-infra}
            type: kubernetes.io/tls
            data: {tls.crt: SGVsbG8gd29ybGQK, tls.key: SGVsbG8gd29ybGQK}

            """;
        foreach (var (name, certificateRef, host) in cases)
        {
            objects += Gateway(name, "- {name: http, port: 80, protocol: HTTP, allowedRoutes: {namespaces: {from: Same}}}\n"
                + "- {name: https, port: 443, protocol: HTTPS, allowedRoutes: {namespaces: {from: All}}, tls: {certificateRefs: [" + certificateRef + "]}}") + Route($"{name}-control", $"{{name: {name}, sectionName: http}}", "{name: infra-backend-v1, port: 80}", $"[{host}]");
        }

        await using var cluster = await StartAsync(objects);

        foreach (var (name, _, host) in cases)
        {
            await ListenersAsync(cluster, name,
                new Listener("http", true, 1, "Accepted True", "ResolvedRefs True"),
                new Listener("https", true, 0, "ResolvedRefs False InvalidCertificateRef", "Programmed False"));
            await cluster.AnswersAsync(host, "/", "infra-backend-v1");
        }
    }

    [Fact]
    public async Task GatewayModifyListeners()
    {
        const string https = "- {name: https, port: 443, protocol: HTTPS, hostname: secure.test.com, allowedRoutes: {namespaces: {from: All}}, tls: {certificateRefs: [{group: \"\", kind: Secret, name: tls-validity-checks-certificate, namespace: gateway-conformance-infra}]}}";
        const string http = "- {name: http, port: 80, protocol: HTTP, allowedRoutes: {namespaces: {from: All}}}";
        const string dataHttp = "- {name: http, port: 80, protocol: HTTP, hostname: data.test.com, allowedRoutes: {namespaces: {from: All}}}";
        var objects = Certificate(Infra, "tls-validity-checks-certificate", "secure.test.com")
            + Gateway("gateway-add-listener", https)
            + Route("http-route-1", "{kind: Gateway, name: gateway-add-listener, namespace: gateway-conformance-infra}", "{name: foo-svc, port: 8080}")
            + Gateway("gateway-remove-listener", https + "\n" + http)
            + Route("http-route-2", "{kind: Gateway, name: gateway-remove-listener, namespace: gateway-conformance-infra}", "{name: foo-svc, port: 8080}");
        await using var cluster = await StartAsync(objects);
        await LatestConditionsAsync(cluster, "gateway-add-listener", 1);
        await LatestConditionsAsync(cluster, "gateway-remove-listener", 1);

        // Added: the new listener counts the route too.
        cluster.Apply(Gateway("gateway-add-listener", https + "\n" + dataHttp));
        await ListenersAsync(cluster, "gateway-add-listener",
            new Listener("https", true, 1, "Accepted True", "ResolvedRefs True"),
            new Listener("http", true, 1, "Accepted True", "ResolvedRefs True"));
        await LatestConditionsAsync(cluster, "gateway-add-listener", 2);

        // Removed: only the plain listener is left in status.
        cluster.Apply(Gateway("gateway-remove-listener", http));
        await ListenersAsync(cluster, "gateway-remove-listener", new Listener("http", true, 1, "Accepted True", "ResolvedRefs True"));
        await LatestConditionsAsync(cluster, "gateway-remove-listener", 2);
    }

    [Fact]
    public async Task GatewaySecretInvalidReferenceGrant()
    {
        // Grants that each get one thing wrong: namespace, from group, from kind, from namespace, to group, to kind, to name.
        const string gateway = "{group: gateway.networking.k8s.io, kind: Gateway, namespace: gateway-conformance-infra}";
        const string secret = "{group: \"\", kind: Secret, name: certificate}";
        var objects = Certificate(WebBackend, "certificate", "secure.example.com")
            + Gateway("gateway-secret-invalid-reference-grant", "- {name: https, port: 443, protocol: HTTPS, allowedRoutes: {namespaces: {from: All}}, tls: {certificateRefs: [{group: \"\", kind: Secret, name: certificate, namespace: gateway-conformance-web-backend}]}}")
            + Grant("reference-grant-wrong-namespace", "gateway-conformance-app-backend", gateway, secret)
            + Grant("reference-grant-wrong-from-group", WebBackend, "{group: not-the-group-youre-looking-for, kind: Gateway, namespace: gateway-conformance-infra}", secret)
            + Grant("reference-grant-wrong-from-kind", WebBackend, "{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: gateway-conformance-infra}", secret)
            + Grant("reference-grant-wrong-from-namespace", WebBackend, "{group: gateway.networking.k8s.io, kind: Gateway, namespace: not-the-namespace-youre-looking-for}", secret)
            + Grant("reference-grant-wrong-to-group", WebBackend, gateway, "{group: not-the-group-youre-looking-for, kind: Secret, name: not-the-certificate-youre-looking-for}")
            + Grant("reference-grant-wrong-to-kind", WebBackend, gateway, "{group: \"\", kind: Service, name: certificate}")
            + Grant("reference-grant-wrong-to-name", WebBackend, gateway, "{group: \"\", kind: Secret, name: not-the-certificate-youre-looking-for}");
        await using var cluster = await StartAsync(objects);

        await ListenersAsync(cluster, "gateway-secret-invalid-reference-grant", new Listener("https", true, 0, "ResolvedRefs False RefNotPermitted", "Programmed False"));
    }

    [Fact]
    public async Task GatewaySecretMissingReferenceGrant()
    {
        // Without a grant the answer is the same whether the Secret exists or not.
        var objects = Certificate(WebBackend, "certificate", "secure.example.com") + Gateway("gateway-secret-missing-reference-grant", """
            - {name: https, port: 443, protocol: HTTPS, allowedRoutes: {namespaces: {from: All}}, tls: {certificateRefs: [{group: "", kind: Secret, name: certificate, namespace: gateway-conformance-web-backend}]}}
            - {name: https-nonexistent-secret, port: 443, protocol: HTTPS, hostname: nonexistent.example.com, allowedRoutes: {namespaces: {from: All}}, tls: {certificateRefs: [{group: "", kind: Secret, name: nonexistent-certificate, namespace: gateway-conformance-web-backend}]}}
            """);
        await using var cluster = await StartAsync(objects);

        await ListenersAsync(cluster, "gateway-secret-missing-reference-grant",
            new Listener("https", true, 0, "ResolvedRefs False RefNotPermitted"),
            new Listener("https-nonexistent-secret", true, 0, "ResolvedRefs False RefNotPermitted"));
    }

    [Fact]
    public async Task GatewaySecretReferenceGrantAllInNamespace()
    {
        var objects = Certificate(WebBackend, "certificate", "secure.example.com")
            + Gateway("gateway-secret-reference-grant-all-in-namespace", "- {name: https, port: 443, protocol: HTTPS, allowedRoutes: {namespaces: {from: All}}, tls: {certificateRefs: [{group: \"\", kind: Secret, name: certificate, namespace: gateway-conformance-web-backend}]}}")
            + Grant("reference-grant-all-in-namespace", WebBackend, "{group: gateway.networking.k8s.io, kind: Gateway, namespace: gateway-conformance-infra}", "{group: \"\", kind: Secret}");
        await using var cluster = await StartAsync(objects);

        await ListenersAsync(cluster, "gateway-secret-reference-grant-all-in-namespace", new Listener("https", true, 0, "Programmed True Programmed", "ResolvedRefs True"));
    }

    [Fact]
    public async Task GatewaySecretReferenceGrantSpecific()
    {
        var objects = Certificate(WebBackend, "certificate", "secure.example.com")
            + Gateway("gateway-secret-reference-grant-specific", "- {name: https, port: 443, protocol: HTTPS, allowedRoutes: {namespaces: {from: All}}, tls: {certificateRefs: [{group: \"\", kind: Secret, name: certificate, namespace: gateway-conformance-web-backend}]}}")
            + Grant("reference-grant-specific", WebBackend, "{group: gateway.networking.k8s.io, kind: Gateway, namespace: gateway-conformance-infra}", "{group: \"\", kind: Secret, name: certificate}");
        await using var cluster = await StartAsync(objects);

        await ListenersAsync(cluster, "gateway-secret-reference-grant-specific", new Listener("https", true, 0, "Programmed True Programmed", "ResolvedRefs True"));
    }

    [Fact]
    public async Task GatewayWithAttachedRoutes()
    {
        // The selector names the label the API server puts on every namespace (kubernetes.io/metadata.name).
        const string listener = "- {name: http, port: 80, protocol: HTTP, allowedRoutes: {kinds: [{kind: HTTPRoute}], namespaces: {from: Selector, selector: {matchLabels: {kubernetes.io/metadata.name: gateway-conformance-infra}}}}}";
        var objects = Gateway("gateway-with-one-attached-route", listener)
            + Route("http-route-1", "{kind: Gateway, name: gateway-with-one-attached-route, namespace: gateway-conformance-infra}", "{name: infra-backend-v1, port: 80}")
            + Gateway("gateway-with-two-attached-routes", listener)
            + Route("http-route-2", "{kind: Gateway, name: gateway-with-two-attached-routes, namespace: gateway-conformance-infra}", "{name: infra-backend-v1, port: 80}")
            + Route("http-route-3", "{kind: Gateway, name: gateway-with-two-attached-routes, namespace: gateway-conformance-infra}", "{name: infra-backend-v1, port: 80}")
            + Route("from-elsewhere", "{kind: Gateway, name: gateway-with-one-attached-route, namespace: gateway-conformance-infra}", "{name: web-backend, port: 80}", ns: WebBackend);
        await using var cluster = await StartAsync(objects);

        await ListenersAsync(cluster, "gateway-with-one-attached-route", new Listener("http", true, 1, "Accepted True", "ResolvedRefs True"));
        await ListenersAsync(cluster, "gateway-with-two-attached-routes", new Listener("http", true, 2, "Accepted True", "ResolvedRefs True"));
        var elsewhere = await cluster.WaitForObjectAsync<HttpRouteResource>(WebBackend, "from-elsewhere", r => r["status"]?["parents"] is JsonArray { Count: 1 });
        Assert.Equal("False/NotAllowedByListeners/1", Condition(elsewhere["status"]!["parents"]![0]!["conditions"], "Accepted"));
    }

    [Fact]
    public async Task HTTPRouteDisallowedKind()
    {
        var objects = Gateway("tlsroutes-only", "- {name: tls, port: 443, protocol: TLS, tls: {mode: Passthrough}, allowedRoutes: {namespaces: {from: Same}, kinds: [{kind: TLSRoute}]}}")
            + Route("disallowed-kind", "{name: tlsroutes-only, namespace: gateway-conformance-infra}", "{name: infra-backend-v1, port: 80}");
        await using var cluster = await StartAsync(objects);

        var route = await cluster.WaitForObjectAsync<HttpRouteResource>(Infra, "disallowed-kind", r => RouteParent(r, "tlsroutes-only") is not null);
        var conditions = RouteParent(route, "tlsroutes-only")!["conditions"];
        Assert.Equal("True/ResolvedRefs/1", Condition(conditions, "ResolvedRefs"));
        Assert.Equal("False/NotAllowedByListeners/1", Condition(conditions, "Accepted"));
        Assert.DoesNotContain(route["status"]!["parents"]!.AsArray(), p => Condition(p!["conditions"], "Accepted")!.StartsWith("True", StringComparison.Ordinal));
        await ListenersAsync(cluster, "tlsroutes-only", new Listener("tls", false, 0, "Accepted False UnsupportedProtocol"));
    }

    [Fact]
    public async Task HTTPRoutePartiallyInvalidViaInvalidReferenceGrant()
    {
        // The grant covers app-backend-v1 only: the rule to app-backend-v2 answers 500, its sibling is served.
        var objects = GatewayYaml.Gateway("- {name: http, port: 80, protocol: HTTP}")
            + Grant("reference-grant", "gateway-conformance-app-backend", "{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: gateway-conformance-infra}", "{group: \"\", kind: Service, name: app-backend-v1}")
            + """
            ---
            apiVersion: gateway.networking.k8s.io/v1
            kind: HTTPRoute
            metadata: {name: invalid-reference-grant, namespace: gateway-conformance-infra}
            spec:
              parentRefs: [{name: same-namespace}]
              rules:
              - matches: [{path: {type: PathPrefix, value: /v2}}]
                backendRefs: [{name: app-backend-v2, namespace: gateway-conformance-app-backend, port: 80}]
              - backendRefs: [{name: app-backend-v1, namespace: gateway-conformance-app-backend, port: 80}]

            """;
        await using var cluster = await StartAsync(objects);

        var route = await cluster.WaitForObjectAsync<HttpRouteResource>(Infra, "invalid-reference-grant", r => RouteParent(r, "same-namespace") is not null);
        var conditions = RouteParent(route, "same-namespace")!["conditions"];
        Assert.Equal("True/Accepted/1", Condition(conditions, "Accepted"));
        Assert.Equal("False/RefNotPermitted/1", Condition(conditions, "ResolvedRefs"));
        await cluster.AnswersAsync("example.com", "/v2", "500");
        await cluster.AnswersAsync("example.com", "/", "app-backend-v1");
    }

    [Fact]
    public async Task HTTPRouteNoBackendRefs()
    {
        // A rule whose backendRefs are left out and one whose list is empty both answer 500 (they are not
        // dropped to a 404); the route is Accepted with ResolvedRefs True, since it refers to nothing unresolved.
        var objects = GatewayYaml.Gateway("- {name: http, port: 80, protocol: HTTP}")
            + """
            ---
            apiVersion: gateway.networking.k8s.io/v1
            kind: HTTPRoute
            metadata: {name: omitted-backendrefs, namespace: gateway-conformance-infra}
            spec:
              parentRefs: [{name: same-namespace}]
              rules:
              - matches: [{path: {type: Exact, value: /omitted-no-forward}}]
              - matches: [{path: {type: Exact, value: /empty-no-forward}}]
                backendRefs: []
              - matches: [{path: {type: PathPrefix, value: /}}]
                backendRefs: [{name: infra-backend-v1, port: 80}]

            """;
        await using var cluster = await StartAsync(objects);

        var route = await cluster.WaitForObjectAsync<HttpRouteResource>(Infra, "omitted-backendrefs", r => RouteParent(r, "same-namespace") is not null);
        var conditions = RouteParent(route, "same-namespace")!["conditions"];
        Assert.Equal("True/Accepted/1", Condition(conditions, "Accepted"));
        Assert.Equal("True/ResolvedRefs/1", Condition(conditions, "ResolvedRefs"));
        await cluster.AnswersAsync("example.com", "/forward", "infra-backend-v1");
        await cluster.AnswersAsync("example.com", "/omitted-no-forward", "500");
        await cluster.AnswersAsync("example.com", "/empty-no-forward", "500");
    }

    [Fact]
    public async Task HTTPRouteServiceTypes()
    {
        // Upstream fills manual Endpoints and EndpointSlices with the infra-backend-v1 pods. The gateway reads
        // EndpointSlices only: a cluster has one for every Service, made by the EndpointSlice controller (selector),
        // by its mirroring controller (selectorless Service with manual Endpoints), or by hand; those are what the
        // fake API server holds here. Every Service maps port 8080 to the endpoint port named first-port.
        await using var backend = await EchoBackend.StartAsync("infra-backend-v1");
        string Service(string name, bool headless, string? managedBy) => $$"""
            ---
            apiVersion: v1
            kind: Service
            metadata: {name: {{name}}, namespace: gateway-conformance-infra}
            spec: {{(headless ? "{clusterIP: None, " : "{")}}ports: [{name: first-port, protocol: TCP, port: 8080, targetPort: {{backend.Port}} }]}
            ---
            apiVersion: discovery.k8s.io/v1
            kind: EndpointSlice
            metadata:
              name: {{name}}-abcde
              namespace: gateway-conformance-infra
              labels: {kubernetes.io/service-name: {{name}}{{(managedBy is null ? "" : $", endpointslice.kubernetes.io/managed-by: {managedBy}")}}}
            addressType: IPv4
            ports: [{name: first-port, port: {{backend.Port}}, protocol: TCP}]
            endpoints: [{addresses: [127.0.0.1], conditions: {ready: true, serving: true, terminating: false} }]

            """;
        const string mirrored = "endpointslicemirroring-controller.k8s.io";
        var paths = new[] { "headless", "manual-endpoints", "headless-manual-endpoints", "manual-endpointslices", "headless-manual-endpointslices" };
        var objects = GatewayYaml.Gateway("- {name: http, port: 80, protocol: HTTP}")
            + Service("manual-endpoints", false, mirrored)
            + Service("manual-endpointslices", false, null)
            + Service("headless", true, "endpointslice-controller.k8s.io")
            + Service("headless-manual-endpoints", true, mirrored)
            + Service("headless-manual-endpointslices", true, null)
            + $$"""
            ---
            apiVersion: gateway.networking.k8s.io/v1
            kind: HTTPRoute
            metadata: {name: service-types, namespace: gateway-conformance-infra}
            spec:
              parentRefs: [{name: same-namespace}]
              rules:
            {{string.Concat(paths.Select(p => $"  - matches: [{{path: {{type: Exact, value: /{p}}}}}]\n    backendRefs: [{{name: {p}, port: 8080}}]\n"))}}

            """;
        await using var cluster = await StartAsync(objects);

        var route = await cluster.WaitForObjectAsync<HttpRouteResource>(Infra, "service-types", r => RouteParent(r, "same-namespace") is not null);
        Assert.Equal("True/Accepted/1", Condition(RouteParent(route, "same-namespace")!["conditions"], "Accepted"));
        Assert.Equal("True/ResolvedRefs/1", Condition(RouteParent(route, "same-namespace")!["conditions"], "ResolvedRefs"));
        foreach (var path in paths)
        {
            await cluster.AnswersAsync("example.com", "/" + path, "infra-backend-v1");
        }

        Assert.Equal(paths.Length, backend.Requests);
    }
}
