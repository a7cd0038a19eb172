using System.Net;
using Weft.Gateway;

namespace Weft.Tests.Gateway;

/// <summary>
/// HTTPRoute values the gateway cannot serve as written (an enum value it does not know, a path that does not start
/// with '/', a regular expression .NET cannot read, a header name that is not a token, a filter it does not
/// implement...): the API server's schema refuses most of them, a file or a CRD without its validation does not. As
/// for invalid timeouts, Gateway API's "Drop Rule(s)": the rule is not served at all, the route's other rules are,
/// and the route's status says so (PartiallyInvalid True UnsupportedValue "Dropped Rule N: ...", or Accepted False
/// when no rule is left).
/// </summary>
public class HttpRouteInvalidValuesTests
{
    private const string Infra = "gateway-conformance-infra";

    private const string Good = """
        - matches: [{path: {type: PathPrefix, value: /good} }]
          backendRefs: [{name: infra-backend-v1, port: 80}]
        """;

    private static string Route(string rules) =>
        GatewayYaml.Service(Infra, "infra-backend-v1", 8080) + GatewayYaml.Service(Infra, "infra-backend-v2", 8081)
        + GatewayYaml.Gateway("- {name: http, port: 80, protocol: HTTP}") + GatewayYaml.HttpRoute("invalid", rules);

    /// <summary>A rule whose first match, PathPrefix /bad, is valid: the invalid value elsewhere in the rule drops it whole.</summary>
    private static string Bad(string match = "", string filters = "[]") => $$"""
        - matches: [{path: {type: PathPrefix, value: /bad} }{{(match.Length > 0 ? ", " + match : "")}}]
          filters: {{filters}}
          backendRefs: [{name: infra-backend-v2, port: 80}]
        """;

    private static (RouteTable Table, GatewayStatusReport Report) Compile(string yaml)
    {
        var (objects, inventory) = GatewayYaml.Load(yaml);
        var report = new GatewayStatusReport();
        return (RouteCompiler.Compile(objects, inventory, report), report);
    }

    public static TheoryData<string, string> InvalidRules => new()
    {
        { Bad("{path: {type: Prefix, value: /bad}}"), "path match type 'Prefix' is not supported (Exact, PathPrefix, RegularExpression are)" },
        { Bad("{path: {type: Exact, value: bad}}"), "path 'bad' must start with '/'" },
        { Bad("{path: {type: RegularExpression, value: \"/bad/([\"}}"), "path '/bad/([' is not a regular expression .NET reads: " },
        { Bad("{method: FETCH}"), "method 'FETCH' is not supported (GET, HEAD, POST, PUT, DELETE, CONNECT, OPTIONS, TRACE, PATCH are)" },
        { Bad("{headers: [{name: \"x version\", value: one}]}"), "header match: 'x version' is not a valid name" },
        { Bad("{headers: [{value: one}]}"), "header match: '' is not a valid name" },
        { Bad("{headers: [{name: version, type: Prefix, value: one}]}"), "header match type 'Prefix' is not supported (Exact, RegularExpression are)" },
        { Bad("{headers: [{name: version, type: RegularExpression, value: \"([\"}]}"), "header version: '([' is not a regular expression .NET reads: " },
        { Bad("{queryParams: [{name: \"a=b\", value: one}]}"), "query parameter match: 'a=b' is not a valid name" },
        { Bad("{queryParams: [{name: q, type: Contains, value: one}]}"), "query parameter match type 'Contains' is not supported (Exact, RegularExpression are)" },
        { Bad(filters: "[{type: RequestRedirect, requestRedirect: {statusCode: 200}}]"), "requestRedirect.statusCode 200 is not supported (301, 302, 303, 307, 308 are)" },
        { Bad(filters: "[{type: RequestRedirect, requestRedirect: {scheme: ftp}}]"), "requestRedirect.scheme 'ftp' is not supported (http, https are)" },
        { Bad(filters: "[{type: RequestRedirect, requestRedirect: {port: 70000}}]"), "requestRedirect.port 70000 is not a port (1-65535)" },
        { Bad(filters: "[{type: RequestRedirect, requestRedirect: {path: {type: ReplaceAll, replaceFullPath: /x}}}]"), "requestRedirect.path.type 'ReplaceAll' is not supported (ReplaceFullPath, ReplacePrefixMatch are)" },
        { Bad(filters: "[{type: URLRewrite, urlRewrite: {path: {type: ReplaceAll}}}]"), "urlRewrite.path.type 'ReplaceAll' is not supported (ReplaceFullPath, ReplacePrefixMatch are)" },
        { Bad(filters: "[{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: \"x:y\", value: z}]}}]"), "requestHeaderModifier: 'x:y' is not a valid name" },
        { Bad(filters: "[{type: ResponseHeaderModifier, responseHeaderModifier: {remove: [\"\"]}}]"), "responseHeaderModifier: '' is not a valid name" },
        { Bad(filters: "[{type: RequestHeaderModifier}]"), "filter RequestHeaderModifier has no requestHeaderModifier field" },
        { Bad(filters: "[{type: RequestMirror, requestMirror: {backendRef: {name: infra-backend-v1, port: 80}}}]"), "filter RequestMirror is not supported (RequestHeaderModifier, ResponseHeaderModifier, RequestRedirect, URLRewrite are)" },
        { Bad(filters: "[{type: NoSuchFilter}]"), "filter NoSuchFilter is not supported (RequestHeaderModifier, ResponseHeaderModifier, RequestRedirect, URLRewrite are)" },
        { Bad(filters: "[{type: RequestHeaderModifier, requestHeaderModifier: {add: [{name: a, value: b}]}}, {type: RequestHeaderModifier, requestHeaderModifier: {add: [{name: c, value: d}]}}]"), "filter RequestHeaderModifier is given more than once" },
        { Bad(filters: "[{type: RequestRedirect, requestRedirect: {hostname: example.org}}, {type: URLRewrite, urlRewrite: {hostname: example.net}}]"), "filters RequestRedirect and URLRewrite cannot be used together" },
    };

    [Theory]
    [MemberData(nameof(InvalidRules))]
    public void AnInvalidValue_DropsItsRule_TheOtherRuleStillRoutes_AndTheRouteIsPartiallyInvalid(string badRule, string why)
    {
        var (table, report) = Compile(Route(Good + "\n" + badRule));

        // The valid rule routes; none of the dropped rule's matches does, not even its valid PathPrefix /bad (404).
        var good = GatewayYaml.Match(table, "x.example", "/good");
        Assert.Equal($"HTTPRoute {Infra}/invalid rule 0", good?.Source);
        Assert.Equal($"{Infra}/infra-backend-v1:80", Assert.Single(good!.Action.Backends).Name);
        Assert.Null(GatewayYaml.Match(table, "x.example", "/bad"));
        Assert.Null(GatewayYaml.Match(table, "x.example", "/bad", method: "FETCH"));

        Assert.Contains(table.Warnings, w => w.StartsWith($"HTTPRoute {Infra}/invalid rule 1: dropped, not served: {why}", StringComparison.Ordinal));
        var parent = Assert.Single(report.Routes[$"{Infra}/invalid"]);
        Assert.Equal(new ConditionReport("Accepted", true, "Accepted", "attached"), parent.Accepted);
        Assert.Equal(new ConditionReport("ResolvedRefs", true, "ResolvedRefs", "all references resolved"), parent.ResolvedRefs);
        Assert.NotNull(parent.PartiallyInvalid);
        Assert.Equal(("PartiallyInvalid", true, "UnsupportedValue"), (parent.PartiallyInvalid.Type, parent.PartiallyInvalid.Status, parent.PartiallyInvalid.Reason));
        Assert.StartsWith($"Dropped Rule 1: {why}", parent.PartiallyInvalid.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void EveryRuleInvalid_TheRouteIsNotAccepted_UnsupportedValue_NamingEachRule()
    {
        var (table, report) = Compile(Route(Bad("{path: {type: Prefix, value: /x}}") + "\n" + Bad(filters: "[{type: RequestMirror}]")));

        Assert.Null(GatewayYaml.Match(table, "x.example", "/bad"));
        var parent = Assert.Single(report.Routes[$"{Infra}/invalid"]);
        Assert.False(parent.Accepted.Status);
        Assert.Equal("UnsupportedValue", parent.Accepted.Reason);
        Assert.Equal(
            "no rule can be served: Dropped Rule 0: path match type 'Prefix' is not supported (Exact, PathPrefix, RegularExpression are); "
            + "Dropped Rule 1: filter RequestMirror is not supported (RequestHeaderModifier, ResponseHeaderModifier, RequestRedirect, URLRewrite are)",
            parent.Accepted.Message);
        Assert.Null(parent.PartiallyInvalid);
    }

    [Fact]
    public void ARedirectWithARewrite_InTheOnlyRule_IsNotAccepted_IncompatibleFilters()
    {
        var (table, report) = Compile(Route(Bad(filters: "[{type: RequestRedirect, requestRedirect: {hostname: example.org}}, {type: URLRewrite, urlRewrite: {hostname: example.net}}]")));

        Assert.Null(GatewayYaml.Match(table, "x.example", "/bad"));
        var parent = Assert.Single(report.Routes[$"{Infra}/invalid"]);
        Assert.Equal(new ConditionReport("Accepted", false, "IncompatibleFilters", "no rule can be served: Dropped Rule 0: filters RequestRedirect and URLRewrite cannot be used together"), parent.Accepted);
    }

    [Fact]
    public void AnExtensionRefFilter_IsNotSkipped_ItsRuleAnswers500_ResolvedRefsFalse()
    {
        // Gateway API: a custom filter that cannot be resolved must not be skipped; its requests get an error response.
        var (table, report) = Compile(Route(Good + "\n" + Bad(filters: "[{type: ExtensionRef, extensionRef: {group: example.com, kind: Auth, name: strict}}]")));

        var bad = GatewayYaml.Match(table, "x.example", "/bad");
        Assert.NotNull(bad);
        var backend = Assert.Single(bad.Action.Backends);
        Assert.Equal("InvalidKind: extensionRef filter example.com/Auth strict cannot be resolved (the gateway has no custom filters)", backend.Invalid);
        var parent = Assert.Single(report.Routes[$"{Infra}/invalid"]);
        Assert.True(parent.Accepted.Status);
        Assert.Equal(("ResolvedRefs", false, "InvalidKind"), (parent.ResolvedRefs.Type, parent.ResolvedRefs.Status, parent.ResolvedRefs.Reason));
        Assert.Null(parent.PartiallyInvalid);
    }

    [Fact]
    public void ValidValues_AreServed_AndNothingIsDropped()
    {
        var (table, report) = Compile(Route(Good + "\n" + """
            - matches:
              - {path: {type: RegularExpression, value: "/re/[a-z]+"}, method: PATCH, headers: [{name: X-Version_1.0, type: RegularExpression, value: "v[0-9]"}], queryParams: [{name: q, value: "1"}]}
              filters:
              - {type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-a, value: b}], add: [{name: "x~c", value: d}], remove: [x-e]}}
              - {type: ResponseHeaderModifier, responseHeaderModifier: {set: [{name: x-f, value: g}]}}
              - {type: URLRewrite, urlRewrite: {hostname: example.net, path: {type: ReplaceFullPath, replaceFullPath: /}}}
              backendRefs: [{name: infra-backend-v2, port: 80}]
            - matches: [{path: {type: Exact, value: /moved} }]
              filters: [{type: RequestRedirect, requestRedirect: {scheme: https, port: 8443, statusCode: 308, path: {type: ReplacePrefixMatch, replacePrefixMatch: /new}}}]
            """));

        Assert.Empty(table.Warnings);
        var parent = Assert.Single(report.Routes[$"{Infra}/invalid"]);
        Assert.True(parent.Accepted.Status);
        Assert.Null(parent.PartiallyInvalid);
        Assert.Equal(308, GatewayYaml.Match(table, "x.example", "/moved")?.Action.Redirect?.StatusCode);
        Assert.Contains(table.Http.Hosts.SelectMany(h => h.Routes), r => r.Source == $"HTTPRoute {Infra}/invalid rule 1" && r.Method == "PATCH" && r.Action.Rewrite?.Hostname == "example.net");
    }

    [Fact]
    public async Task OnTheWire_TheValidRuleAnswers_TheDroppedRule404s_TheExtensionRefRule500s()
    {
        await using var gateway = new GatewayLoopback();
        var backends = await gateway.ConformanceBackendsAsync();
        await gateway.StartAsync(backends + GatewayYaml.Gateway("- {name: http, port: 80, protocol: HTTP}") + GatewayYaml.HttpRoute("invalid", """
            - matches: [{path: {type: PathPrefix, value: /good} }]
              backendRefs: [{name: infra-backend-v1, port: 80}]
            - matches: [{path: {type: PathPrefix, value: /bad} }, {path: {type: RegularExpression, value: "/bad/(["} }]
              backendRefs: [{name: infra-backend-v2, port: 80}]
            - matches: [{path: {type: PathPrefix, value: /ext} }]
              filters: [{type: ExtensionRef, extensionRef: {group: example.com, kind: Auth, name: strict} }]
              backendRefs: [{name: infra-backend-v3, port: 80}]
            """));

        Assert.Equal("infra-backend-v1", (await gateway.EchoAsync("example.com", "/good")).Backend);
        Assert.Equal(HttpStatusCode.NotFound, await gateway.StatusAsync("example.com", "/bad"));
        Assert.Equal(HttpStatusCode.InternalServerError, await gateway.StatusAsync("example.com", "/ext"));
        Assert.Equal(0, gateway.Backend("infra-backend-v2").Requests);
        Assert.Equal(0, gateway.Backend("infra-backend-v3").Requests);
        Assert.Contains("rule 1: dropped, not served: path '/bad/([' is not a regular expression", await gateway.AdminAsync("/routes"), StringComparison.Ordinal);
    }
}
