using System.Text.Json;
using Weft.Tests.Telemetry;

namespace Weft.Tests.Admin;

/// <summary>The admin API on loopback: flows with filters, config sections, certificates without keys.</summary>
public sealed class AdminServerTests : IDisposable
{
    private readonly FakeAgent _agent = new();
    private readonly HttpClient _http = new();

    public void Dispose()
    {
        _http.Dispose();
        _agent.Dispose();
    }

    private async Task<JsonElement> GetAsync(string path)
    {
        var body = await _http.GetStringAsync($"http://{_agent.Address}{path}");
        return JsonDocument.Parse(body).RootElement;
    }

    [Fact]
    public async Task Flows_ListsLiveAndRecent_WithByteCountsAsTheyAreNow()
    {
        var live = TelemetryFixtures.Outbound();
        var done = TelemetryFixtures.Outbound(to: "demo/reviews-v1-7d9f8c6b5-x2k4q");
        _agent.Flows.Opened(live);
        _agent.Flows.Opened(done);
        done.ResponseFlags = "UF";
        _agent.Flows.Closed(done);
        live.AddSent(123);

        var root = await GetAsync("/flows");
        var l = Assert.Single(root.GetProperty("live").EnumerateArray());
        Assert.Equal(123, l.GetProperty("bytes_sent").GetInt64());
        Assert.Equal("live", l.GetProperty("state").GetString());
        var r = Assert.Single(root.GetProperty("recent").EnumerateArray());
        Assert.Equal("finished", r.GetProperty("state").GetString());
        Assert.Equal("error", r.GetProperty("verdict").GetString());

        live.AddSent(77);
        var again = await GetAsync("/flows?verdict=forwarded");
        Assert.Equal(200, Assert.Single(again.GetProperty("live").EnumerateArray()).GetProperty("bytes_sent").GetInt64());
        Assert.Empty(again.GetProperty("recent").EnumerateArray());
    }

    [Fact]
    public async Task Flows_LastCountsOverLiveAndFinished()
    {
        var flows = Enumerable.Range(0, 5).Select(i => TelemetryFixtures.Outbound(clientPort: 5000 + i)).ToList();
        foreach (var flow in flows)
        {
            _agent.Flows.Opened(flow);
            await Task.Delay(2);
        }

        _agent.Flows.Closed(flows[4]);
        var root = await GetAsync("/flows?last=2");
        var ids = root.GetProperty("live").EnumerateArray().Concat(root.GetProperty("recent").EnumerateArray()).Select(f => f.GetProperty("id").GetInt64()).Order().ToList();
        Assert.Equal([flows[3].Id, flows[4].Id], ids);
    }

    [Fact]
    public async Task ConfigDump_HasWorkloadsServicesPoliciesAndCertificates_NeverAPrivateKey()
    {
        var text = await _http.GetStringAsync($"http://{_agent.Address}/config_dump");
        Assert.DoesNotContain("PRIVATE KEY", text);
        var root = JsonDocument.Parse(text).RootElement;
        Assert.Equal("node1", root.GetProperty("node").GetString());
        var workloads = root.GetProperty("workloads").EnumerateArray().ToList();
        Assert.Contains(workloads, w => w.GetProperty("name").GetString() == "demo/reviews-v1-7d9f8c6b5-x2k4q" && w.GetProperty("workload").GetString() == "reviews-v1");
        var service = Assert.Single(root.GetProperty("services").EnumerateArray());
        Assert.Equal("10.96.0.10", service.GetProperty("vips").GetString());
        Assert.Equal("80/TCP->8080", service.GetProperty("ports").GetString());
        var policy = Assert.Single(root.GetProperty("policies").EnumerateArray());
        Assert.Equal("DENY", policy.GetProperty("action").GetString());
        Assert.Equal("WorkloadSelector:app=b", policy.GetProperty("scope").GetString());
        var certs = root.GetProperty("certificates").EnumerateArray().ToList();
        var leaf = Assert.Single(certs, c => c.GetProperty("type").GetString() == "Leaf");
        Assert.Equal("spiffe://cluster.local/ns/demo/sa/a", leaf.GetProperty("name").GetString());
        Assert.True(leaf.GetProperty("valid").GetBoolean());
        Assert.StartsWith("-----BEGIN CERTIFICATE-----", leaf.GetProperty("pem").GetString());
        Assert.Contains(certs, c => c.GetProperty("type").GetString() == "Root");
    }

    [Fact]
    public async Task UnknownPath_Is404WithTheKnownPaths()
    {
        var response = await _http.GetAsync($"http://{_agent.Address}/nope");
        Assert.Equal(System.Net.HttpStatusCode.NotFound, response.StatusCode);
        Assert.Contains("/flows", await response.Content.ReadAsStringAsync());
    }
}
