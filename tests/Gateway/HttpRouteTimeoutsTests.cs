using System.Text.Json;
using System.Text.RegularExpressions;
using k8s;
using Weft.Cli;
using Weft.Gateway;

namespace Weft.Tests.Gateway;

/// <summary>
/// HTTPRoute rule timeouts in the compiler: Gateway API's Duration format (GEP-2257, <c>^([0-9]{1,5}(h|m|s|ms)){1,4}$</c>),
/// "0s" as no timeout, the API server's rule that backendRequest is at most request (a file can break it: the rule
/// is dropped, the route's other rules served, and the route's status says so as Gateway API's "Drop Rule(s)"),
/// the field read from Kubernetes JSON, how <c>weft routes</c> shows them, and which timeout a forward runs with.
/// </summary>
public class HttpRouteTimeoutsTests
{
    private const string Infra = "gateway-conformance-infra";

    private static string Route(string rules) =>
        GatewayYaml.Service(Infra, "infra-backend-v1", 8080) + GatewayYaml.Gateway("- {name: http, port: 80, protocol: HTTP}") + GatewayYaml.HttpRoute("timeouts", rules);

    private static string Rule(string path, string timeouts) => $$"""
        - matches: [{path: {type: PathPrefix, value: {{path}}} }]
          backendRefs: [{name: infra-backend-v1, port: 80}]
          timeouts: {{timeouts}}
        """;

    private static (RouteTable Table, GatewayStatusReport Report) Compile(string yaml)
    {
        var (objects, inventory) = GatewayYaml.Load(yaml);
        var report = new GatewayStatusReport();
        return (RouteCompiler.Compile(objects, inventory, report), report);
    }

    [Theory]
    [InlineData("1h", 3_600_000)]
    [InlineData("500ms", 500)]
    [InlineData("1m30s", 90_000)]
    [InlineData("10s", 10_000)]
    [InlineData("1ms", 1)]
    [InlineData("0s", 0)]
    [InlineData("0ms", 0)]
    [InlineData("1h2m3s4ms", 3_723_004)]
    [InlineData("30s1m", 90_000)] // any order, parts added up (as Go's time.ParseDuration)
    [InlineData("1s1s", 2_000)]
    [InlineData("99999ms", 99_999)]
    [InlineData("00010s", 10_000)]
    public void Duration_Valid_IsReadAsTheSumOfItsParts(string text, long milliseconds)
    {
        Assert.True(GatewayDuration.TryParse(text, out var value));
        Assert.Equal(TimeSpan.FromMilliseconds(milliseconds), value);
    }

    [Fact]
    public void Duration_TheLongestThePatternAllows_IsRead()
    {
        Assert.True(GatewayDuration.TryParse("99999h99999m99999s99999ms", out var value));
        Assert.Equal(TimeSpan.FromHours(99999) + TimeSpan.FromMinutes(99999) + TimeSpan.FromSeconds(99999) + TimeSpan.FromMilliseconds(99999), value);
    }

    [Theory]
    [InlineData("")]
    [InlineData(null)]
    [InlineData("1")] // no unit
    [InlineData("s")] // no number
    [InlineData("0")]
    [InlineData("1.5s")] // no fractions
    [InlineData("-1s")] // no sign
    [InlineData("+1s")]
    [InlineData("1d")] // units: h, m, s, ms only
    [InlineData("1us")]
    [InlineData("1µs")]
    [InlineData("1ns")]
    [InlineData("1S")] // case matters
    [InlineData("1H")]
    [InlineData("123456s")] // at most 5 digits a part
    [InlineData("1h1m1s1ms1h")] // at most 4 parts
    [InlineData("1s1s1s1s1s")]
    [InlineData(" 1s")]
    [InlineData("1s ")]
    [InlineData("1 s")]
    [InlineData("1sms")] // "ms" needs its own number
    [InlineData("1mss")]
    [InlineData("٣s")] // an Arabic-Indic digit is no ASCII digit
    [InlineData("PT1S")]
    public void Duration_Invalid_IsRefused(string? text)
    {
        Assert.False(GatewayDuration.TryParse(text, out _));
    }

    [Theory]
    [InlineData(90_000, "1m30s")]
    [InlineData(500, "500ms")]
    [InlineData(3_600_000, "1h")]
    [InlineData(90_000_000, "25h")]
    [InlineData(3_723_004, "1h2m3s4ms")]
    [InlineData(0, "0s")]
    public void Duration_IsShownInTheShortestForm(long milliseconds, string text)
    {
        Assert.Equal(text, GatewayDuration.Format(TimeSpan.FromMilliseconds(milliseconds)));
        Assert.True(GatewayDuration.TryParse(text, out var back));
        Assert.Equal(TimeSpan.FromMilliseconds(milliseconds), back);
    }

    [Fact]
    public void Timeouts_AreCarriedInTheCompiledRoute_AndZeroMeansNone()
    {
        var (table, report) = Compile(Route(
            Rule("/both", "{request: 10s, backendRequest: 2s}")
            + "\n" + Rule("/equal", "{request: 10s, backendRequest: 10s}")
            + "\n" + Rule("/off", "{request: 0s}")
            + "\n" + Rule("/backend-only", "{request: 0s, backendRequest: 1m}"))); // 0s: no request timeout, so any backendRequest

        Assert.Equal(new RouteTimeouts(TimeSpan.FromSeconds(10), TimeSpan.FromSeconds(2)), GatewayYaml.Match(table, "x.example", "/both")!.Action.Timeouts);
        Assert.Equal(new RouteTimeouts(TimeSpan.FromSeconds(10), TimeSpan.FromSeconds(10)), GatewayYaml.Match(table, "x.example", "/equal")!.Action.Timeouts);
        Assert.Null(GatewayYaml.Match(table, "x.example", "/off")!.Action.Timeouts);
        Assert.Equal(new RouteTimeouts(null, TimeSpan.FromMinutes(1)), GatewayYaml.Match(table, "x.example", "/backend-only")!.Action.Timeouts);
        Assert.Empty(table.Warnings);
        var parent = Assert.Single(report.Routes[$"{Infra}/timeouts"]);
        Assert.True(parent.Accepted.Status);
        Assert.Null(parent.PartiallyInvalid);
    }

    [Fact]
    public void BackendRequestLongerThanRequest_DropsThatRule_ServesTheOthers_AndTheRouteIsPartiallyInvalid()
    {
        var (table, report) = Compile(Route(
            Rule("/good", "{request: 10s, backendRequest: 1s}")
            + "\n" + Rule("/bad", "{request: 1s, backendRequest: 2s}")));

        Assert.NotNull(GatewayYaml.Match(table, "x.example", "/good"));
        Assert.Null(GatewayYaml.Match(table, "x.example", "/bad")); // not served: 404
        Assert.Contains($"HTTPRoute {Infra}/timeouts rule 1: dropped, not served: timeouts.backendRequest 2s is longer than timeouts.request 1s", table.Warnings);
        var parent = Assert.Single(report.Routes[$"{Infra}/timeouts"]);
        Assert.Equal(new ConditionReport("Accepted", true, "Accepted", "attached"), parent.Accepted);
        Assert.True(parent.ResolvedRefs.Status);
        Assert.Equal("PartiallyInvalid", parent.PartiallyInvalid!.Type);
        Assert.True(parent.PartiallyInvalid.Status);
        Assert.Equal("UnsupportedValue", parent.PartiallyInvalid.Reason);
        Assert.Equal("Dropped Rule 1: timeouts.backendRequest 2s is longer than timeouts.request 1s", parent.PartiallyInvalid.Message);
    }

    [Fact]
    public void EveryRuleInvalid_TheRouteIsNotAccepted_UnsupportedValue()
    {
        var (table, report) = Compile(Route(
            Rule("/a", "{request: 1d}")
            + "\n" + Rule("/b", "{request: 500ms, backendRequest: 501ms}")));

        Assert.Null(GatewayYaml.Match(table, "x.example", "/a"));
        Assert.Null(GatewayYaml.Match(table, "x.example", "/b"));
        Assert.Contains(table.Warnings, w => w.Contains("rule 0: dropped, not served: timeouts.request '1d' is not a Gateway API duration", StringComparison.Ordinal));
        var parent = Assert.Single(report.Routes[$"{Infra}/timeouts"]);
        Assert.False(parent.Accepted.Status);
        Assert.Equal("UnsupportedValue", parent.Accepted.Reason);
        Assert.StartsWith("no rule can be served: Dropped Rule 0: ", parent.Accepted.Message, StringComparison.Ordinal);
        Assert.Contains("Dropped Rule 1: timeouts.backendRequest 501ms is longer than timeouts.request 500ms", parent.Accepted.Message, StringComparison.Ordinal);
        Assert.Null(parent.PartiallyInvalid); // never set on a route that is not accepted
    }

    [Fact]
    public void WeftRoutes_AndTheAdminRoutes_ShowEachRulesTimeouts()
    {
        var (table, _) = Compile(Route(
            Rule("/both", "{request: 1m30s, backendRequest: 500ms}")
            + "\n" + Rule("/backend", "{backendRequest: 2s}")
            + "\n" + Rule("/none", "{request: 0s}")));

        using var json = JsonDocument.Parse(RouteTableJson.Serialize(table, null));
        var text = RoutesCommand.Table(json.RootElement).Split('\n');

        Assert.Matches(@"^LISTENER\s+HOST\s+PATH\s+MATCH\s+ROUTE\s+TIMEOUTS\s+BACKENDS$", text[0]);
        Assert.Contains(text, l => Regex.IsMatch(l, @"^http\s+\*\s+Prefix /both\s+-\s+HTTPRoute gateway-conformance-infra/timeouts rule 0\s+request 1m30s, backend 500ms\s+gateway-conformance-infra/infra-backend-v1:80 \(1 endpoints\)$"));
        Assert.Contains(text, l => Regex.IsMatch(l, @"^http\s+\*\s+Prefix /backend\s+-\s+HTTPRoute gateway-conformance-infra/timeouts rule 1\s+backend 2s\s+"));
        Assert.Contains(text, l => Regex.IsMatch(l, @"^http\s+\*\s+Prefix /none\s+-\s+HTTPRoute gateway-conformance-infra/timeouts rule 2\s+-\s+"));
        var both = json.RootElement.GetProperty("routes").EnumerateArray().First(r => r.GetProperty("path").GetString() == "/both").GetProperty("timeouts");
        Assert.Equal("1m30s", both.GetProperty("request").GetString());
        Assert.Equal("500ms", both.GetProperty("backendRequest").GetString());
        var none = json.RootElement.GetProperty("routes").EnumerateArray().First(r => r.GetProperty("path").GetString() == "/none").GetProperty("timeouts");
        Assert.Equal(JsonValueKind.Null, none.GetProperty("request").ValueKind);
        Assert.Contains("\tHTTPRoute gateway-conformance-infra/timeouts rule 0\trequest 1m30s, backend 500ms\t", GatewayServer.Describe(table, null), StringComparison.Ordinal);
        Assert.Contains("\tHTTPRoute gateway-conformance-infra/timeouts rule 2\t-\t", GatewayServer.Describe(table, null), StringComparison.Ordinal);
    }

    [Fact]
    public void Timeouts_AreReadFromKubernetesJson_AsTheApiServerSendsThem()
    {
        var route = KubernetesJson.Deserialize<HttpRouteResource>("""
            {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": {"name": "r", "namespace": "ns", "generation": 3},
             "spec": {"parentRefs": [{"name": "gw"}], "rules": [{"backendRefs": [{"name": "svc", "port": 80}], "timeouts": {"request": "10s", "backendRequest": "500ms"}}]}}
            """);

        var timeouts = route.Spec.Rules![0].Timeouts!;
        Assert.Equal("10s", timeouts.Request);
        Assert.Equal("500ms", timeouts.BackendRequest);
        Assert.Equal(new RouteTimeouts(TimeSpan.FromSeconds(10), TimeSpan.FromMilliseconds(500)), RouteCompiler.CompileTimeouts(timeouts, out var invalid));
        Assert.Null(invalid);
        Assert.Contains("\"timeouts\":{\"request\":\"10s\",\"backendRequest\":\"500ms\"}", KubernetesJson.Serialize(route), StringComparison.Ordinal);
    }

    [Theory]
    [InlineData(10_000, 2_000, "backendRequest", 2_000)]
    [InlineData(2_000, 2_000, "request", 2_000)]
    [InlineData(1_000, null, "request", 1_000)]
    [InlineData(null, 500, "backendRequest", 500)]
    public void AForward_RunsWithTheShorterTimeout(int? request, int? backend, string which, int after)
    {
        using var deadline = new ForwardDeadline(new RouteTimeouts(
            request is { } r ? TimeSpan.FromMilliseconds(r) : null, backend is { } b ? TimeSpan.FromMilliseconds(b) : null), CancellationToken.None);

        Assert.Equal(which, deadline.Which);
        Assert.Equal(TimeSpan.FromMilliseconds(after), deadline.After);
        Assert.False(deadline.TimedOut);
    }

    [Fact]
    public async Task ATimeout_IsKnownAsOneBeforeTheForwarderHearsOfIt()
    {
        using var deadline = new ForwardDeadline(new RouteTimeouts(TimeSpan.FromMilliseconds(50), null), CancellationToken.None);
        var seen = new TaskCompletionSource<bool>(TaskCreationOptions.RunContinuationsAsynchronously);

        // As the forwarder does: it registers on the token after the deadline was made, so its callback runs first.
        using var forwarder = deadline.Token.Register(() => seen.TrySetResult(deadline.TimedOut));

        Assert.True(await seen.Task.WaitAsync(TimeSpan.FromSeconds(30)), "the forwarder gave up before the deadline said it was a timeout: 502, not 504");
    }

    [Fact]
    public async Task AForward_TimesOut_OnlyWhileTheClientIsStillThere()
    {
        using var client = new CancellationTokenSource();
        using (var deadline = new ForwardDeadline(new RouteTimeouts(TimeSpan.FromMilliseconds(50), null), client.Token))
        {
            await Task.Delay(Timeout.Infinite, deadline.Token).ContinueWith(_ => { }, TaskScheduler.Default);
            Assert.True(deadline.TimedOut);
        }

        await client.CancelAsync(); // the client left first: the timer running out afterwards is no timeout
        using (var deadline = new ForwardDeadline(new RouteTimeouts(TimeSpan.FromMilliseconds(50), null), client.Token))
        {
            await Task.Delay(Timeout.Infinite, deadline.Token).ContinueWith(_ => { }, TaskScheduler.Default);
            Assert.False(deadline.TimedOut);
        }

        using (var deadline = new ForwardDeadline(new RouteTimeouts(TimeSpan.FromMilliseconds(50), null), CancellationToken.None))
        {
            deadline.Disarm(); // an accepted WebSocket upgrade
            await Task.Delay(200);
            Assert.False(deadline.TimedOut);
            Assert.False(deadline.Token.IsCancellationRequested);
        }
    }
}
