using System.Net;
using System.Text.Json;
using Weft.Cli;
using Weft.Gateway;

namespace Weft.Tests.Gateway;

/// <summary>Passive health on 5xx answers, the access log line per request, and <c>weft routes</c>.</summary>
public class GatewayHealthAndLogTests
{
    private static string Ingress(string name, string host, string path, string service) => $$"""
        ---
        apiVersion: networking.k8s.io/v1
        kind: Ingress
        metadata: {name: {{name}}, namespace: default}
        spec:
          ingressClassName: weft
          rules:
          - host: "{{host}}"
            http:
              paths:
              - {pathType: Prefix, path: "{{path}}", backend: {service: {name: {{service}}, port: {number: 80} } } }

        """;

    [Fact]
    public async Task EndpointAnswering5xxInARow_IsEjected_Counted_AndReturnsAfterTheEjectionTime()
    {
        var gateway = new GatewayLoopback();
        await using var _ = gateway;
        var healthy = await gateway.BackendAsync("healthy");
        await using var failing = await TrafficBackend.StartAsync("failing");

        // One Service, two endpoints: the echo backend answers 200 to every path, the other 503 to /status/503.
        await gateway.StartAsync(GatewayYaml.Service("default", "mixed", healthy.Port, failing.Port) + Ingress("mixed", "x.example", "/", "mixed"),
            new GatewayOptions { Consecutive5xxToEject = 3, EjectionTime = TimeSpan.FromSeconds(3) });

        var statuses = new List<HttpStatusCode>();
        for (var i = 0; i < 20; i++)
        {
            statuses.Add(await gateway.StatusAsync("x.example", "/status/503"));
        }

        // Round robin: the failing endpoint gets every other request until its third 503 ejects it.
        Assert.Equal(3, failing.StatusAnswers);
        Assert.Equal(3, statuses.Count(s => s == HttpStatusCode.ServiceUnavailable));
        Assert.Equal(1, gateway.Metrics.EjectionCountFor("5xx"));
        Assert.Contains("weft_gateway_endpoint_ejections_total{reason=\"5xx\"} 1", await gateway.AdminAsync("/metrics"));

        await Task.Delay(TimeSpan.FromSeconds(4));
        for (var i = 0; i < 4; i++)
        {
            await gateway.StatusAsync("x.example", "/status/503");
        }

        Assert.True(failing.StatusAnswers > 3, "the ejected endpoint got no request after its ejection time");
    }

    [Fact]
    public async Task GoodAnswers_BreakARunOf5xx_SoAnEndpointThatOnlySometimesFails_IsNotEjected()
    {
        var gateway = new GatewayLoopback();
        await using var _ = gateway;
        await using var backend = await TrafficBackend.StartAsync("flaky");
        await gateway.StartAsync(GatewayYaml.Service("default", "flaky", backend.Port) + Ingress("flaky", "x.example", "/", "flaky"),
            new GatewayOptions { Consecutive5xxToEject = 3 });

        for (var i = 0; i < 5; i++)
        {
            Assert.Equal(HttpStatusCode.InternalServerError, await gateway.StatusAsync("x.example", "/status/500"));
            Assert.Equal(HttpStatusCode.InternalServerError, await gateway.StatusAsync("x.example", "/status/500"));
            Assert.Equal(HttpStatusCode.OK, await gateway.StatusAsync("x.example", "/status/200"));
        }

        Assert.Equal(0, gateway.Metrics.EjectionCount);
    }

    [Fact]
    public async Task AccessLog_WritesOneJsonLinePerRequest_WithRouteUpstreamStatusAndTraceParent()
    {
        var gateway = new GatewayLoopback();
        await using var _ = gateway;
        var web = await gateway.BackendAsync("web");
        var log = Path.Combine(Path.GetTempPath(), $"weft-access-{Guid.NewGuid():N}.log");
        try
        {
            await gateway.StartAsync(GatewayYaml.Service("default", "web", web.Port) + Ingress("web", "x.example", "/", "web"), new GatewayOptions { AccessLog = log });

            var incoming = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
            await gateway.EchoAsync("x.example", "/a/../hello?q=1", r => r.Headers.Add("traceparent", incoming));
            Assert.Equal(HttpStatusCode.NotFound, await gateway.StatusAsync("nobody.example", "/x"));

            var lines = await LinesAsync(log, 2);
            using var served = JsonDocument.Parse(lines[0]);
            using var missed = JsonDocument.Parse(lines[1]);
            var s = served.RootElement;
            Assert.Equal("GET", s.GetProperty("method").GetString());
            Assert.Equal("x.example", s.GetProperty("host").GetString());
            Assert.Equal("/hello", s.GetProperty("path").GetString());
            Assert.Equal(200, s.GetProperty("status").GetInt32());
            Assert.Equal($"127.0.0.1:{web.Port}", s.GetProperty("upstream").GetString());
            Assert.Equal("Ingress default/web", s.GetProperty("route").GetString());
            Assert.StartsWith("00-0af7651916cd43dd8448eb211c80319c-", s.GetProperty("traceparent").GetString(), StringComparison.Ordinal);
            Assert.True(s.GetProperty("duration_ms").GetDouble() >= 0);
            Assert.Equal("HTTP/1.1", s.GetProperty("protocol").GetString());
            Assert.Equal(404, missed.RootElement.GetProperty("status").GetInt32());
            Assert.Equal("NR", missed.RootElement.GetProperty("flags").GetString());
            Assert.Equal(JsonValueKind.Null, missed.RootElement.GetProperty("upstream").ValueKind);
        }
        finally
        {
            File.Delete(log);
        }
    }

    [Fact]
    public async Task WeftRoutes_PrintsWhichRouteServesWhichHostAndPath_FromTheGatewaysAdminEndpoint()
    {
        var gateway = new GatewayLoopback();
        await using var _ = gateway;
        var web = await gateway.BackendAsync("web");
        await gateway.StartAsync(GatewayYaml.Service("default", "web", web.Port) + Ingress("web", "x.example", "/", "web") + Ingress("api", "x.example", "/api", "missing"));
        var admin = $"127.0.0.1:{gateway.Server.AdminEndpoint!.Port}";

        var (code, table, _) = await RunAsync("routes", "--admin", admin);
        var (jsonCode, json, _) = await RunAsync("routes", "--admin", admin, "-o", "json");

        Assert.Equal(0, code);
        var lines = table.Split('\n');
        Assert.StartsWith("LISTENER", lines[0], StringComparison.Ordinal);
        Assert.Matches(@"^http\s+x\.example\s+Prefix /api\s+-\s+Ingress default/api\s+-\s+default/missing:80 \(0 endpoints\)$", lines[1]);
        Assert.Matches(@"^http\s+x\.example\s+Prefix /\s+-\s+Ingress default/web\s+-\s+default/web:80 \(1 endpoints\)$", lines[2]);
        Assert.Contains("warning: Ingress default/api: Service default/missing not found", table);
        Assert.Equal(0, jsonCode);
        using var doc = JsonDocument.Parse(json);
        Assert.Contains(doc.RootElement.GetProperty("routes").EnumerateArray(), r => r.GetProperty("listener").GetString() == "https" && r.GetProperty("path").GetString() == "/api");
    }

    [Fact]
    public async Task WeftRoutes_WithNoGatewayThere_SaysSoAndExits1()
    {
        var port = Harness.LoopbackPorts.Free();

        var (code, stdout, stderr) = await RunAsync("routes", "--admin", $"127.0.0.1:{port}");

        Assert.Equal(1, code);
        Assert.Equal("", stdout);
        Assert.Contains($"cannot reach a gateway admin endpoint at 127.0.0.1:{port}", stderr);
    }

    private static async Task<(int Code, string Stdout, string Stderr)> RunAsync(params string[] args)
    {
        using var stdout = new StringWriter();
        using var stderr = new StringWriter();
        var code = await WeftCli.RunAsync(args, stdout, stderr);
        return (code, stdout.ToString(), stderr.ToString());
    }

    private static async Task<string[]> LinesAsync(string path, int count)
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(30);
        while (true)
        {
            var lines = File.Exists(path) ? (await File.ReadAllLinesAsync(path)).Where(l => l.Length > 0).ToArray() : [];
            if (lines.Length >= count || DateTime.UtcNow > deadline)
            {
                Assert.True(lines.Length == count, $"{lines.Length} access log lines: {string.Join('\n', lines)}");
                return lines;
            }

            await Task.Delay(50);
        }
    }
}
