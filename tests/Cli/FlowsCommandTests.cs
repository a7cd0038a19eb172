using System.Diagnostics;
using System.Text;
using System.Text.Json;
using Weft.Cli;
using Weft.Tests.Admin;
using Weft.Tests.Telemetry;

namespace Weft.Tests.Cli;

/// <summary><c>weft flows</c> and the views against a real admin API on loopback.</summary>
public sealed class FlowsCommandTests : IDisposable
{
    private readonly FakeAgent _agent = new();

    public void Dispose() => _agent.Dispose();

    /// <summary>Collects written lines with the moment each arrived.</summary>
    private sealed class Lines : TextWriter
    {
        private readonly StringBuilder _pending = new();
        private readonly List<(TimeSpan At, string Line)> _lines = [];
        private readonly Stopwatch _clock = Stopwatch.StartNew();

        public override Encoding Encoding => Encoding.UTF8;

        public TimeSpan Now => _clock.Elapsed;

        public override void Write(char value)
        {
            lock (_lines)
            {
                if (value == '\n')
                {
                    _lines.Add((_clock.Elapsed, _pending.ToString()));
                    _pending.Clear();
                }
                else
                {
                    _pending.Append(value);
                }
            }
        }

        public List<(TimeSpan At, string Line)> Snapshot()
        {
            lock (_lines)
            {
                return [.. _lines];
            }
        }

        public override string ToString() => string.Join('\n', Snapshot().Select(l => l.Line));
    }

    private async Task<(int Exit, string Out, string Err)> RunAsync(params string[] args)
    {
        var stdout = new StringWriter();
        var stderr = new StringWriter();
        var exit = await FlowsCommand.RunAsync([.. args, "--admin", _agent.Address], stdout, stderr, CancellationToken.None);
        return (exit, stdout.ToString(), stderr.ToString());
    }

    [Fact]
    public async Task Flows_FiltersReachTheAgent_AndJsonLinesParse()
    {
        var a = TelemetryFixtures.Outbound();
        var denied = TelemetryFixtures.Outbound(from: "demo/b1", to: "demo/a1");
        denied.ResponseFlags = "DENY";
        _agent.Flows.Opened(a);
        _agent.Flows.Opened(denied);
        _agent.Flows.Closed(denied);

        var (exit, output, error) = await RunAsync("--verdict", "denied", "-o", "json");
        Assert.True(exit == 0, error);
        var line = Assert.Single(output.TrimEnd('\n').Split('\n'));
        Assert.Equal(denied.Id, JsonDocument.Parse(line).RootElement.GetProperty("id").GetInt64());

        (exit, output, _) = await RunAsync("--from-pod", "demo/a1");
        Assert.Equal(0, exit);
        Assert.StartsWith("START", output);
        Assert.Equal(2, output.TrimEnd('\n').Split('\n').Length);
        Assert.Contains("demo/a1", output);
    }

    [Fact]
    public async Task Follow_ShowsALiveFlowWithinASecond_AndItsBytesGrow()
    {
        var stdout = new Lines();
        using var stop = new CancellationTokenSource();
        var run = FlowsCommand.RunAsync(["--follow", "-o", "json", "--pod", "demo/a1", "--admin", _agent.Address], stdout, TextWriter.Null, stop.Token);
        await Task.Delay(300);

        var flow = TelemetryFixtures.Outbound();
        var opened = stdout.Now;
        _agent.Flows.Opened(flow);
        for (var i = 0; i < 10; i++)
        {
            flow.AddSent(1000);
            await Task.Delay(100);
        }

        // The finished record follows at the next poll; wait for it (bounded) rather than a fixed time,
        // which a loaded machine overran.
        _agent.Flows.Closed(flow);
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(10);
        while (DateTime.UtcNow < deadline && !stdout.Snapshot().Any(l => l.Line.Contains($"\"id\":{flow.Id},", StringComparison.Ordinal)
            && l.Line.Contains("\"state\":\"finished\"", StringComparison.Ordinal)))
        {
            await Task.Delay(50);
        }

        stop.Cancel();
        Assert.Equal(0, await run);

        var seen = stdout.Snapshot().Select(l => (l.At, Json: JsonDocument.Parse(l.Line).RootElement))
            .Where(l => l.Json.GetProperty("id").GetInt64() == flow.Id).ToList();
        Assert.NotEmpty(seen);
        Assert.True(seen[0].At - opened < TimeSpan.FromSeconds(1), $"first seen after {(seen[0].At - opened).TotalMilliseconds} ms");
        var liveBytes = seen.Where(s => s.Json.GetProperty("state").GetString() == "live").Select(s => s.Json.GetProperty("bytes_sent").GetInt64()).ToList();
        Assert.True(liveBytes.Count >= 2 && liveBytes[^1] > liveBytes[0], $"live byte counts seen: {string.Join(", ", liveBytes)}");
        Assert.Equal(10_000, seen[^1].Json.GetProperty("bytes_sent").GetInt64());
        Assert.Equal("finished", seen[^1].Json.GetProperty("state").GetString());
    }

    [Fact]
    public async Task UnreachableAgent_GetsOneClearErrorLine_NotAStackTrace()
    {
        var stderr = new StringWriter();
        var exit = await FlowsCommand.RunAsync(["--admin", $"127.0.0.1:{FakeAgent.FreePort()}"], TextWriter.Null, stderr, CancellationToken.None);
        Assert.Equal(1, exit);
        var line = Assert.Single(stderr.ToString().TrimEnd('\n').Split('\n'));
        Assert.StartsWith("weft: cannot reach the Weft agent's admin API at 127.0.0.1:", line);
        Assert.Contains("connection refused", line);

        var viewErr = new StringWriter();
        Assert.Equal(1, await ViewsCommand.RunAsync("certs", ["--admin", $"127.0.0.1:{FakeAgent.FreePort()}"], TextWriter.Null, viewErr, CancellationToken.None));
        Assert.Single(viewErr.ToString().TrimEnd('\n').Split('\n'));
    }

    [Fact]
    public async Task BadOptions_AreUsageErrors()
    {
        var (exit, _, error) = await RunAsync("--pod", "a1");
        Assert.Equal(2, exit);
        Assert.Contains("--pod wants NAMESPACE/NAME", error);
        (exit, _, error) = await RunAsync("--node", "node2");
        Assert.Equal(2, exit);
        Assert.Contains("--node and --admin both say which agent to ask", error);
        (exit, _, error) = await RunAsync("--since", "soon");
        Assert.Equal(2, exit);
        Assert.Contains("--since wants", error);
    }

    [Fact]
    public async Task Views_ShowTheAgentsInventoryAndCertificates()
    {
        var stdout = new StringWriter();
        Assert.Equal(0, await ViewsCommand.RunAsync("workloads", ["--admin", _agent.Address], stdout, TextWriter.Null, CancellationToken.None));
        Assert.StartsWith("NAMESPACE  POD NAME", stdout.ToString());
        Assert.Contains("reviews-v1-7d9f8c6b5-x2k4q", stdout.ToString());

        stdout = new StringWriter();
        Assert.Equal(0, await ViewsCommand.RunAsync("certs", ["--admin", _agent.Address, "-o", "json"], stdout, TextWriter.Null, CancellationToken.None));
        var certs = JsonDocument.Parse(stdout.ToString()).RootElement.EnumerateArray().ToList();
        Assert.Contains(certs, c => c.GetProperty("name").GetString() == "spiffe://cluster.local/ns/demo/sa/a");
        Assert.DoesNotContain("PRIVATE KEY", stdout.ToString());
    }
}
