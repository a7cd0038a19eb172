using System.Text.Json.Nodes;
using k8s.Models;
using Weft.Gateway;
using static Weft.Tests.Gateway.GatewayOnFakeCluster;

namespace Weft.Tests.Gateway;

/// <summary>
/// <c>weft gateway</c> in Kubernetes mode against the wire-level fake API server: routes follow watch events
/// without a restart, a malformed object keeps the last good routes, an API server outage is caught up by
/// relisting, and status is written as a conformant controller writes it (the status scenarios of the
/// upstream conformance suite, under their upstream names), only when it changes.
/// </summary>
public class GatewayKubernetesTests
{
    private const string Infra = "gateway-conformance-infra";
    private const string WebBackend = "gateway-conformance-web-backend";
    private const string HttpListener = "- {name: http, port: 80, protocol: HTTP}";

    private static string Route(string name, string backendRefs, string ns = Infra, string parent = "{name: same-namespace, namespace: gateway-conformance-infra}", string hostnames = "[]") => $$"""
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

    private static string Backend(string name, string ns = Infra) => $"{{name: {name}, namespace: {ns}, port: 80}}";

    private static async Task<GatewayOnFakeCluster> StartAsync(string objects, string listeners = HttpListener, GatewayStatusOptions? status = null)
    {
        var cluster = new GatewayOnFakeCluster();
        await cluster.ConformanceBackendsAsync();
        cluster.Apply(GatewayYaml.Gateway(listeners) + objects);
        await cluster.StartAsync(status);
        return cluster;
    }

    private static async Task<JsonObject> RouteStatusAsync(GatewayOnFakeCluster cluster, string name, string accepted, string resolvedRefs, string ns = Infra, string? sectionName = null)
    {
        return await cluster.WaitForObjectAsync<HttpRouteResource>(ns, name, route =>
            RouteParent(route, "same-namespace", sectionName) is { } parent
            && Condition(parent["conditions"], "Accepted") == accepted
            && Condition(parent["conditions"], "ResolvedRefs") == resolvedRefs);
    }

    [Fact]
    public async Task KubernetesMode_RouteAddedChangedAndDeletedThroughWatchEvents_IsServedWithoutRestart()
    {
        await using var cluster = await StartAsync("");
        Assert.Equal("404", await cluster.AnswerAsync("example.com", "/"));

        cluster.Apply(Route("watched", Backend("infra-backend-v1")));
        await cluster.AnswersAsync("example.com", "/", "infra-backend-v1");

        cluster.Apply(Route("watched", Backend("infra-backend-v2")));
        await cluster.AnswersAsync("example.com", "/", "infra-backend-v2");

        Assert.True(cluster.Api.Delete<HttpRouteResource>(Infra, "watched"));
        await cluster.AnswersAsync("example.com", "/", "404");

        // An endpoint change (a new EndpointSlice port) is followed too.
        var moved = await EchoBackend.StartAsync("moved");
        await using var _ = moved;
        cluster.Apply(Route("watched", Backend("infra-backend-v1")) + GatewayYaml.Service(Infra, "infra-backend-v1", moved.Port));
        await cluster.AnswersAsync("example.com", "/", "moved");
    }

    [Fact]
    public async Task KubernetesMode_IngressOfClassWeft_IsServed_AndItsLoadBalancerStatusIsThePublishedServiceAddress()
    {
        var ingress = """
            ---
            apiVersion: networking.k8s.io/v1
            kind: IngressClass
            metadata: {name: weft}
            spec: {controller: weft.dev/gateway}
            ---
            apiVersion: networking.k8s.io/v1
            kind: Ingress
            metadata: {name: shop, namespace: gateway-conformance-infra}
            spec:
              ingressClassName: weft
              rules:
              - host: shop.example.com
                http: {paths: [{path: /, pathType: Prefix, backend: {service: {name: infra-backend-v3, port: {number: 80}}}}]}
            ---
            apiVersion: networking.k8s.io/v1
            kind: Ingress
            metadata: {name: someone-else, namespace: gateway-conformance-infra}
            spec:
              ingressClassName: nginx
              rules:
              - host: other.example.com
                http: {paths: [{path: /, pathType: Prefix, backend: {service: {name: infra-backend-v1, port: {number: 80}}}}]}

            """;
        await using var cluster = await StartAsync(ingress, status: new GatewayStatusOptions { PublishService = "weft-system/weft-gateway" });
        await cluster.AnswersAsync("shop.example.com", "/cart", "infra-backend-v3");
        Assert.Equal("404", await cluster.AnswerAsync("other.example.com", "/"));

        // The gateway's own Service gets its load balancer address: the Ingress status follows.
        cluster.Api.Apply(new V1Service
        {
            Metadata = new V1ObjectMeta { Name = "weft-gateway", NamespaceProperty = "weft-system" },
            Spec = new V1ServiceSpec { Type = "LoadBalancer", Ports = [new V1ServicePort { Name = "http", Port = 80 }] },
            Status = new V1ServiceStatus { LoadBalancer = new V1LoadBalancerStatus { Ingress = [new V1LoadBalancerIngress { Ip = "203.0.113.7" }] } },
        });
        var shop = await cluster.WaitForObjectAsync<V1Ingress>(Infra, "shop", i => i["status"]?["loadBalancer"]?["ingress"]?[0]?["ip"]?.GetValue<string>() == "203.0.113.7");
        Assert.Equal("""[{"ip":"203.0.113.7"}]""", shop["status"]!["loadBalancer"]!["ingress"]!.ToJsonString());
        Assert.Null(cluster.Api.Get<V1Ingress>(Infra, "someone-else")!["status"]?["loadBalancer"]?["ingress"]);
        Assert.DoesNotContain(cluster.Api.StatusPatches, p => p.Name == "someone-else");
    }

    [Fact]
    public async Task GatewayClassAndGateway_AreAcceptedAndProgrammed_WithListenerConditionsAndAttachedRoutes()
    {
        var listeners = """
            - {name: http, port: 80, protocol: HTTP}
            - {name: tcp, port: 9000, protocol: TCP}
            """;
        await using var cluster = await StartAsync(Route("attached", Backend("infra-backend-v1"), parent: "{name: same-namespace, sectionName: http}"), listeners);

        var gatewayClass = await cluster.WaitForObjectAsync<GatewayClassResource>(null, "weft", c => Condition(c["status"]?["conditions"], "Accepted") == "True/Accepted/1");
        Assert.NotNull(gatewayClass["status"]!["conditions"]![0]!["lastTransitionTime"]);

        var gateway = await cluster.WaitForObjectAsync<GatewayResource>(Infra, "same-namespace", g => Condition(g["status"]?["conditions"], "Programmed") == "True/Programmed/1");
        Assert.Equal("True/Accepted/1", Condition(gateway["status"]!["conditions"], "Accepted"));
        Assert.Equal("""[{"type":"IPAddress","value":"192.0.2.10"}]""", gateway["status"]!["addresses"]!.ToJsonString());
        var http = gateway["status"]!["listeners"]!.AsArray().Single(l => l!["name"]!.GetValue<string>() == "http")!;
        Assert.Equal(1, http["attachedRoutes"]!.GetValue<int>());
        Assert.Equal("""[{"group":"gateway.networking.k8s.io","kind":"HTTPRoute"}]""", http["supportedKinds"]!.ToJsonString());
        Assert.Equal("True/Accepted/1", Condition(http["conditions"], "Accepted"));
        Assert.Equal("True/ResolvedRefs/1", Condition(http["conditions"], "ResolvedRefs"));
        Assert.Equal("True/Programmed/1", Condition(http["conditions"], "Programmed"));
        var tcp = gateway["status"]!["listeners"]!.AsArray().Single(l => l!["name"]!.GetValue<string>() == "tcp")!;
        Assert.Equal("False/UnsupportedProtocol/1", Condition(tcp["conditions"], "Accepted"));
        Assert.Equal("[]", tcp["supportedKinds"]!.ToJsonString());
    }

    [Fact]
    public async Task GatewaysWithAddressesOfTheirOwn_ReportThemInStatusAddresses_TheOthersTheSharedOne()
    {
        // same-namespace: its own address given (as --gateway-status-address, or the IP its --gateway-http is bound to);
        // published: its own Service's load balancer (--gateway-publish-service); shared: no address of its own.
        var gateways = GatewayYaml.Gateway(HttpListener, name: "published") + GatewayYaml.Gateway(HttpListener, name: "shared");
        var status = new GatewayStatusOptions
        {
            Addresses = ["192.0.2.10"],
            Gateways = new Dictionary<string, GatewayStatusOptions>
            {
                [$"{Infra}/same-namespace"] = new() { Addresses = ["127.0.0.1"] },
                [$"{Infra}/published"] = new() { PublishService = "weft-system/published-lb" },
            },
        };
        var server = new GatewayOptions
        {
            GatewayHttp = new Dictionary<string, System.Net.IPEndPoint>
            {
                [$"{Infra}/same-namespace"] = new(System.Net.IPAddress.Loopback, 0),
                [$"{Infra}/published"] = new(System.Net.IPAddress.Loopback, 0),
            },
        };
        var cluster = new GatewayOnFakeCluster();
        await using var _ = cluster;
        await cluster.ConformanceBackendsAsync();
        cluster.Apply(GatewayYaml.Gateway(HttpListener) + gateways + GatewayOwnAddressTests.Route("own", "same-namespace", "infra-backend-v2"));
        await cluster.StartAsync(status, server);

        var own = await cluster.WaitForObjectAsync<GatewayResource>(Infra, "same-namespace", g => Condition(g["status"]?["conditions"], "Programmed") == "True/Programmed/1");
        Assert.Equal("""[{"type":"IPAddress","value":"127.0.0.1"}]""", own["status"]!["addresses"]!.ToJsonString());
        var shared = await cluster.WaitForObjectAsync<GatewayResource>(Infra, "shared", g => Condition(g["status"]?["conditions"], "Programmed") == "True/Programmed/1");
        Assert.Equal("""[{"type":"IPAddress","value":"192.0.2.10"}]""", shared["status"]!["addresses"]!.ToJsonString());

        // Its own Service has no load balancer address yet: no address, not Programmed (not the shared address).
        var published = await cluster.WaitForObjectAsync<GatewayResource>(Infra, "published", g => g["status"]?["conditions"] is not null);
        Assert.Equal("False/AddressNotAssigned/1", Condition(published["status"]!["conditions"], "Programmed"));
        Assert.Equal("[]", published["status"]!["addresses"]!.ToJsonString());

        cluster.Api.Apply(new V1Service
        {
            Metadata = new V1ObjectMeta { Name = "published-lb", NamespaceProperty = "weft-system" },
            Spec = new V1ServiceSpec { Type = "LoadBalancer", Ports = [new V1ServicePort { Name = "http", Port = 80 }] },
            Status = new V1ServiceStatus { LoadBalancer = new V1LoadBalancerStatus { Ingress = [new V1LoadBalancerIngress { Hostname = "published.example.net" }] } },
        });
        published = await cluster.WaitForObjectAsync<GatewayResource>(Infra, "published", g => Condition(g["status"]?["conditions"], "Programmed") == "True/Programmed/1");
        Assert.Equal("""[{"type":"Hostname","value":"published.example.net"}]""", published["status"]!["addresses"]!.ToJsonString());

        // The address in status is where the Gateway's own route is answered: its routes alone.
        using var request = new HttpRequestMessage(HttpMethod.Get, $"http://127.0.0.1:{cluster.Server.GatewayHttpEndpoints[$"{Infra}/same-namespace"].Port}/");
        request.Headers.Host = "example.com";
        using var response = await cluster.Client.SendAsync(request);
        Assert.Contains("infra-backend-v2", await response.Content.ReadAsStringAsync());
        using var other = new HttpRequestMessage(HttpMethod.Get, $"http://127.0.0.1:{cluster.Server.GatewayHttpEndpoints[$"{Infra}/published"].Port}/");
        other.Headers.Host = "example.com";
        using var otherResponse = await cluster.Client.SendAsync(other);
        Assert.Equal(System.Net.HttpStatusCode.NotFound, otherResponse.StatusCode);
    }

    [Fact]
    public async Task GatewayInvalidTLSConfiguration_ListenerResolvedRefsIsFalse_InvalidCertificateRef()
    {
        var listeners = "- {name: https, port: 443, protocol: HTTPS, tls: {certificateRefs: [{kind: Secret, name: does-not-exist}]}}";
        await using var cluster = await StartAsync("", listeners);

        var gateway = await cluster.WaitForObjectAsync<GatewayResource>(Infra, "same-namespace",
            g => Condition(g["status"]?["listeners"]?[0]?["conditions"], "ResolvedRefs") == "False/InvalidCertificateRef/1");
        Assert.Equal("False/Invalid/1", Condition(gateway["status"]!["listeners"]![0]!["conditions"], "Programmed"));
    }

    [Fact]
    public async Task HTTPRouteSimpleSameNamespace_RouteIsAcceptedWithResolvedRefs()
    {
        await using var cluster = await StartAsync(Route("gateway-conformance-infra-test", Backend("infra-backend-v1")));

        var route = await RouteStatusAsync(cluster, "gateway-conformance-infra-test", "True/Accepted/1", "True/ResolvedRefs/1");
        Assert.Equal("""{"group":"gateway.networking.k8s.io","kind":"Gateway","namespace":"gateway-conformance-infra","name":"same-namespace"}""",
            RouteParent(route, "same-namespace")!["parentRef"]!.ToJsonString());
        await cluster.AnswersAsync("example.com", "/", "infra-backend-v1");
    }

    [Fact]
    public async Task HTTPRouteInvalidNonExistentBackendRef_ResolvedRefsIsFalse_BackendNotFound()
    {
        await using var cluster = await StartAsync(Route("invalid-nonexistent-backend-ref", Backend("nonexistent")));

        await RouteStatusAsync(cluster, "invalid-nonexistent-backend-ref", "True/Accepted/1", "False/BackendNotFound/1");
        await cluster.AnswersAsync("example.com", "/", "500");
    }

    [Fact]
    public async Task HTTPRouteInvalidBackendRefUnknownKind_ResolvedRefsIsFalse_InvalidKind()
    {
        await using var cluster = await StartAsync(Route("invalid-backend-ref-unknown-kind", "{group: unknownkind.example.com, kind: NonExistent, name: infra-backend-v1, port: 80}"));

        await RouteStatusAsync(cluster, "invalid-backend-ref-unknown-kind", "True/Accepted/1", "False/InvalidKind/1");
        await cluster.AnswersAsync("example.com", "/", "500");
    }

    [Fact]
    public async Task HTTPRouteInvalidCrossNamespaceBackendRef_ResolvedRefsIsFalse_RefNotPermitted()
    {
        await using var cluster = await StartAsync(Route("invalid-cross-namespace-backend-ref", Backend("web-backend", WebBackend)));

        await RouteStatusAsync(cluster, "invalid-cross-namespace-backend-ref", "True/Accepted/1", "False/RefNotPermitted/1");
        await cluster.AnswersAsync("example.com", "/", "500");
    }

    [Fact]
    public async Task HTTPRouteInvalidReferenceGrant_ResolvedRefsIsFalse_RefNotPermitted_UntilAGrantAllowsIt()
    {
        // A grant in the backend's namespace, but for another Service: not permitted.
        var wrongGrant = """
            ---
            apiVersion: gateway.networking.k8s.io/v1beta1
            kind: ReferenceGrant
            metadata: {name: reference-grant, namespace: gateway-conformance-web-backend}
            spec:
              from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: gateway-conformance-infra}]
              to: [{group: "", kind: Service, name: not-web-backend}]

            """;
        await using var cluster = await StartAsync(Route("reference-grant", Backend("web-backend", WebBackend)) + wrongGrant);

        await RouteStatusAsync(cluster, "reference-grant", "True/Accepted/1", "False/RefNotPermitted/1");
        await cluster.AnswersAsync("example.com", "/", "500");

        // HTTPRouteReferenceGrant: the grant corrected through a watch event resolves the route.
        cluster.Apply(wrongGrant.Replace("name: not-web-backend", "name: web-backend", StringComparison.Ordinal));
        await RouteStatusAsync(cluster, "reference-grant", "True/Accepted/1", "True/ResolvedRefs/1");
        await cluster.AnswersAsync("example.com", "/", "web-backend");
    }

    [Fact]
    public async Task HTTPRouteInvalidCrossNamespaceParentRef_AcceptedIsFalse_NotAllowedByListeners()
    {
        await using var cluster = await StartAsync(Route("invalid-cross-namespace-parent-ref", Backend("web-backend", WebBackend), ns: WebBackend));

        await RouteStatusAsync(cluster, "invalid-cross-namespace-parent-ref", "False/NotAllowedByListeners/1", "True/ResolvedRefs/1", ns: WebBackend);
        var gateway = await cluster.WaitForObjectAsync<GatewayResource>(Infra, "same-namespace", g => g["status"]?["listeners"] is not null);
        Assert.Equal(0, gateway["status"]!["listeners"]![0]!["attachedRoutes"]!.GetValue<int>());
        Assert.Equal("404", await cluster.AnswerAsync("example.com", "/"));
    }

    [Fact]
    public async Task HTTPRouteInvalidParentRefNotMatchingSectionName_AcceptedIsFalse_NoMatchingParent()
    {
        await using var cluster = await StartAsync(Route("httproute-listener-not-matching-section-name", Backend("infra-backend-v1"),
            parent: "{name: same-namespace, sectionName: nonexistent}"));

        await RouteStatusAsync(cluster, "httproute-listener-not-matching-section-name", "False/NoMatchingParent/1", "True/ResolvedRefs/1", sectionName: "nonexistent");
    }

    [Fact]
    public async Task HTTPRouteHostnameIntersection_RouteWithNoIntersectingHostname_AcceptedIsFalse_NoMatchingListenerHostname()
    {
        var listeners = "- {name: listener-1, port: 80, protocol: HTTP, hostname: very.specific.com}";
        await using var cluster = await StartAsync(
            Route("no-intersecting-hosts", Backend("infra-backend-v1"), parent: "{name: same-namespace, sectionName: listener-1}", hostnames: "[specific.but.wrong.com, wildcard.io]"),
            listeners);

        await RouteStatusAsync(cluster, "no-intersecting-hosts", "False/NoMatchingListenerHostname/1", "True/ResolvedRefs/1", sectionName: "listener-1");
    }

    [Fact]
    public async Task HTTPRouteListenerHostnameMatching_EachRouteIsAcceptedOnItsListener_AndListenersCountThem()
    {
        var listeners = """
            - {name: listener-1, port: 80, protocol: HTTP, hostname: bar.com}
            - {name: listener-2, port: 80, protocol: HTTP, hostname: foo.bar.com}
            - {name: listener-3, port: 80, protocol: HTTP, hostname: "*.bar.com"}
            - {name: listener-4, port: 80, protocol: HTTP, hostname: "*.foo.com"}
            """;
        var routes = Route("backend-v1", Backend("infra-backend-v1"), parent: "{name: same-namespace, sectionName: listener-1}")
            + Route("backend-v2", Backend("infra-backend-v2"), parent: "{name: same-namespace, sectionName: listener-2}")
            + Route("backend-v3", Backend("infra-backend-v3"), parent: "{name: same-namespace, sectionName: listener-3}, {name: same-namespace, sectionName: listener-4}");
        await using var cluster = await StartAsync(routes, listeners);

        await RouteStatusAsync(cluster, "backend-v1", "True/Accepted/1", "True/ResolvedRefs/1", sectionName: "listener-1");
        await RouteStatusAsync(cluster, "backend-v2", "True/Accepted/1", "True/ResolvedRefs/1", sectionName: "listener-2");
        await RouteStatusAsync(cluster, "backend-v3", "True/Accepted/1", "True/ResolvedRefs/1", sectionName: "listener-3");
        await RouteStatusAsync(cluster, "backend-v3", "True/Accepted/1", "True/ResolvedRefs/1", sectionName: "listener-4");
        var gateway = await cluster.WaitForObjectAsync<GatewayResource>(Infra, "same-namespace", g => g["status"]?["listeners"] is not null);
        Assert.All(gateway["status"]!["listeners"]!.AsArray(), l => Assert.Equal(1, l!["attachedRoutes"]!.GetValue<int>()));
        await cluster.AnswersAsync("foo.bar.com", "/", "infra-backend-v2");
        await cluster.AnswersAsync("bar.foo.com", "/", "infra-backend-v3");
    }

    [Fact]
    public async Task HTTPRouteObservedGenerationBump_StatusFollowsTheNewGeneration_AndKeepsItsTransitionTime()
    {
        await using var cluster = await StartAsync(Route("observed-generation-bump", Backend("infra-backend-v1")));
        var before = await RouteStatusAsync(cluster, "observed-generation-bump", "True/Accepted/1", "True/ResolvedRefs/1");
        var transition = RouteParent(before, "same-namespace")!["conditions"]![0]!["lastTransitionTime"]!.GetValue<string>();

        cluster.Apply(Route("observed-generation-bump", Backend("infra-backend-v2")));

        var after = await RouteStatusAsync(cluster, "observed-generation-bump", "True/Accepted/2", "True/ResolvedRefs/2");
        Assert.Equal(2, after["metadata"]!["generation"]!.GetValue<long>());
        Assert.Equal(transition, RouteParent(after, "same-namespace")!["conditions"]![0]!["lastTransitionTime"]!.GetValue<string>());
        await cluster.AnswersAsync("example.com", "/", "infra-backend-v2");
    }

    [Fact]
    public async Task HTTPRouteWithARuleWhoseBackendRequestExceedsItsRequestTimeout_DropsThatRule_PartiallyInvalid_UntilFixed()
    {
        // The API server refuses this by CEL; a CRD installed without its validation, or an older one, lets it in.
        static string Timeouts(string badRule) => GatewayYaml.HttpRoute("timeouts", $$"""
            - matches: [{path: {type: PathPrefix, value: /timed} }]
              backendRefs: [{name: infra-backend-v1, port: 80}]
              timeouts: {request: 500ms}
            - matches: [{path: {type: PathPrefix, value: /other} }]
              backendRefs: [{name: infra-backend-v2, port: 80}]
              timeouts: {{badRule}}
            """);
        await using var cluster = await StartAsync(Timeouts("{request: 1s, backendRequest: 2s}"));

        var route = await cluster.WaitForObjectAsync<HttpRouteResource>(Infra, "timeouts", r =>
            RouteParent(r, "same-namespace") is { } parent && Condition(parent["conditions"], "PartiallyInvalid") == "True/UnsupportedValue/1");
        var conditions = RouteParent(route, "same-namespace")!["conditions"]!;
        Assert.Equal("True/Accepted/1", Condition(conditions, "Accepted"));
        Assert.Equal("True/ResolvedRefs/1", Condition(conditions, "ResolvedRefs"));
        Assert.Equal("Dropped Rule 1: timeouts.backendRequest 2s is longer than timeouts.request 1s",
            conditions.AsArray().Single(c => c!["type"]!.GetValue<string>() == "PartiallyInvalid")!["message"]!.GetValue<string>());

        // The valid rule is served with its timeout (read from the API server's JSON); the dropped one is not served.
        await cluster.AnswersAsync("example.com", "/timed", "infra-backend-v1");
        Assert.Equal("504", await cluster.AnswerAsync("example.com", "/timed?delay=2s"));
        Assert.Equal("404", await cluster.AnswerAsync("example.com", "/other"));

        cluster.Apply(Timeouts("{request: 2s, backendRequest: 1s}"));
        await cluster.AnswersAsync("example.com", "/other", "infra-backend-v2");
        route = await cluster.WaitForObjectAsync<HttpRouteResource>(Infra, "timeouts", r =>
            RouteParent(r, "same-namespace") is { } parent && Condition(parent["conditions"], "Accepted") == "True/Accepted/2");
        Assert.Null(Condition(RouteParent(route, "same-namespace")!["conditions"], "PartiallyInvalid"));
    }

    [Fact]
    public async Task HTTPRouteWithAnInvalidValue_DropsThatRule_PartiallyInvalidIsWritten_AndAllInvalid_AcceptedFalse()
    {
        // What the API server's schema would refuse (an enum value, a regex .NET cannot read); a CRD without it lets it in.
        static string Rules(string rules) => GatewayYaml.HttpRoute("invalid", rules);
        const string Good = "- matches: [{path: {type: PathPrefix, value: /good} }]\n  backendRefs: [{name: infra-backend-v1, port: 80}]";
        const string BadRegex = "- matches: [{path: {type: PathPrefix, value: /bad} }, {path: {type: RegularExpression, value: \"/bad/([\"} }]\n  backendRefs: [{name: infra-backend-v2, port: 80}]";
        const string Incompatible = "- filters: [{type: RequestRedirect, requestRedirect: {hostname: example.org}}, {type: URLRewrite, urlRewrite: {hostname: example.net}}]";
        await using var cluster = await StartAsync(Rules(Good + "\n" + BadRegex));

        var route = await cluster.WaitForObjectAsync<HttpRouteResource>(Infra, "invalid", r =>
            RouteParent(r, "same-namespace") is { } parent && Condition(parent["conditions"], "PartiallyInvalid") == "True/UnsupportedValue/1");
        var conditions = RouteParent(route, "same-namespace")!["conditions"]!;
        Assert.Equal("True/Accepted/1", Condition(conditions, "Accepted"));
        Assert.StartsWith("Dropped Rule 1: path '/bad/([' is not a regular expression .NET reads: ",
            conditions.AsArray().Single(c => c!["type"]!.GetValue<string>() == "PartiallyInvalid")!["message"]!.GetValue<string>(), StringComparison.Ordinal);
        await cluster.AnswersAsync("example.com", "/good", "infra-backend-v1");
        Assert.Equal("404", await cluster.AnswerAsync("example.com", "/bad"));

        // No valid rule left: not accepted, with the reason of the first dropped rule; nothing of it is served.
        cluster.Apply(Rules(Incompatible));
        route = await cluster.WaitForObjectAsync<HttpRouteResource>(Infra, "invalid", r =>
            RouteParent(r, "same-namespace") is { } parent && Condition(parent["conditions"], "Accepted") == "False/IncompatibleFilters/2");
        Assert.Null(Condition(RouteParent(route, "same-namespace")!["conditions"], "PartiallyInvalid"));
        Assert.Equal("404", await cluster.AnswerAsync("example.com", "/good"));
    }

    [Fact]
    public async Task Status_IsWrittenOnlyWhenItChanges_OwnWritesAndUnrelatedEventsWriteNothing()
    {
        await using var cluster = await StartAsync(Route("quiet", Backend("infra-backend-v1")));
        await RouteStatusAsync(cluster, "quiet", "True/Accepted/1", "True/ResolvedRefs/1");
        await cluster.WaitForObjectAsync<GatewayResource>(Infra, "same-namespace", g => Condition(g["status"]?["conditions"], "Programmed") == "True/Programmed/1");

        // Every status write comes back as a watch event and a recompile; none of them may write again.
        await Task.Delay(TimeSpan.FromSeconds(2));
        var settled = cluster.Api.StatusPatches.Count;
        Assert.Equal(3, settled); // GatewayClass, Gateway, HTTPRoute: once each

        // An unrelated change recompiles the routes but changes no status.
        var version = cluster.Source.Current.Version;
        cluster.Apply(GatewayYaml.Namespace("unrelated"));
        await WaitUntilAsync(() => cluster.Source.Current.Version > version);
        await Task.Delay(TimeSpan.FromSeconds(1));
        Assert.Equal(settled, cluster.Api.StatusPatches.Count);
        Assert.Equal(settled, cluster.Source.StatusWrites);

        // Another controller rewrites the route's status with only its own entry: ours is written back, theirs is kept.
        var theirs = new JsonObject
        {
            ["parentRef"] = new JsonObject { ["name"] = "their-gateway" },
            ["controllerName"] = "example.com/other",
            ["conditions"] = new JsonArray(),
        };
        var route = cluster.Api.Get<HttpRouteResource>(Infra, "quiet")!;
        route["status"] = new JsonObject { ["parents"] = new JsonArray(theirs) };
        cluster.Api.ApplyJson<HttpRouteResource>(route.ToJsonString());
        var restored = await RouteStatusAsync(cluster, "quiet", "True/Accepted/1", "True/ResolvedRefs/1");
        var parents = restored["status"]!["parents"]!.AsArray();
        Assert.Equal(2, parents.Count);
        Assert.Equal("example.com/other", parents[0]!["controllerName"]!.GetValue<string>());
        Assert.Equal(settled + 1, cluster.Api.StatusPatches.Count);
    }

    [Fact]
    public async Task MalformedObject_KeepsTheLastGoodRoutes_WithALogOfWhatCannotBeRead_UntilItIsFixed()
    {
        await using var cluster = await StartAsync(Route("breaks", Backend("infra-backend-v1")));
        await cluster.AnswersAsync("example.com", "/", "infra-backend-v1");

        // spec.rules as a string: no HTTPRoute reader can take it (a CRD with a schema would refuse it; this checks the gateway does not depend on that).
        var uid = cluster.Api.Get<HttpRouteResource>(Infra, "breaks")!["metadata"]!["uid"]!.GetValue<string>();
        cluster.Api.ApplyJson<HttpRouteResource>($$$"""
            {"metadata": {"name": "breaks", "namespace": "gateway-conformance-infra", "uid": "{{{uid}}}"},
             "spec": {"parentRefs": [{"name": "same-namespace"}], "rules": "route everything to v2"}}
            """);
        await WaitUntilAsync(() => cluster.Source.LastError is not null);
        Assert.Contains("httproutes gateway-conformance-infra/breaks cannot be read", cluster.Source.LastError);
        Assert.Equal("infra-backend-v1", await cluster.AnswerAsync("example.com", "/"));

        // A relist (watch history gone) reads the same malformed item: the last good version still serves.
        cluster.Api.Compact();
        cluster.Api.ExpireWatches();
        await cluster.Api.WaitForWatchesAsync(TimeSpan.FromSeconds(20), kinds: 10);
        cluster.Apply(GatewayYaml.Namespace("after-relist"));
        await Task.Delay(TimeSpan.FromMilliseconds(500));
        Assert.Equal("infra-backend-v1", await cluster.AnswerAsync("example.com", "/"));

        cluster.Apply(Route("breaks", Backend("infra-backend-v2")));
        await cluster.AnswersAsync("example.com", "/", "infra-backend-v2");
        await WaitUntilAsync(() => cluster.Source.LastError is null);
    }

    [Fact]
    public async Task ApiServerDownThenBack_RoutesKeepServing_AndChangesMadeMeanwhileAreCaughtUpByRelisting()
    {
        await using var cluster = await StartAsync(Route("before", Backend("infra-backend-v1"), hostnames: "[before.example.com]")
            + Route("deleted-meanwhile", Backend("infra-backend-v2"), hostnames: "[deleted.example.com]"));
        await cluster.AnswersAsync("before.example.com", "/", "infra-backend-v1");
        await cluster.AnswersAsync("deleted.example.com", "/", "infra-backend-v2");

        await cluster.Api.StopAsync();
        cluster.Apply(Route("added-meanwhile", Backend("infra-backend-v3"), hostnames: "[added.example.com]"));
        cluster.Api.Delete<HttpRouteResource>(Infra, "deleted-meanwhile");
        cluster.Api.Compact(); // the history is gone: only a relist can catch up
        await Task.Delay(TimeSpan.FromSeconds(1));
        Assert.Equal("infra-backend-v1", await cluster.AnswerAsync("before.example.com", "/"));
        Assert.Equal("infra-backend-v2", await cluster.AnswerAsync("deleted.example.com", "/"));

        cluster.Api.Resume();

        await cluster.AnswersAsync("added.example.com", "/", "infra-backend-v3", seconds: 30);
        await cluster.AnswersAsync("deleted.example.com", "/", "404", seconds: 30);
        Assert.Equal("infra-backend-v1", await cluster.AnswerAsync("before.example.com", "/"));
        await RouteStatusAsync(cluster, "added-meanwhile", "True/Accepted/1", "True/ResolvedRefs/1");
    }

    private static async Task WaitUntilAsync(Func<bool> condition, double seconds = 20)
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(seconds);
        while (!condition())
        {
            Assert.True(DateTime.UtcNow < deadline, "the condition was not met in time");
            await Task.Delay(50);
        }
    }
}
