using System.Collections.Concurrent;
using System.Net;
using System.Net.Sockets;
using System.Text.Json;
using Weft.Harness;

namespace Weft.Tests.Harness;

/// <summary>PeerApp in-process on loopback: the same code `weft app` runs inside pods.</summary>
public sealed class PeerAppTests
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(60);

    [Fact]
    public async Task Hash_ServerAndClient_AgreeOnEveryByte()
    {
        await using var server = await InProcessPeer.ServeAsync("hash", replyBytes: 100_000);

        var client = await InProcessPeer.RunAsync("send", "--to", server.Address, "--bytes", "1048576", "--connections", "3", "--expect-reply-bytes", "100000");

        Assert.Equal(0, client.ExitCode);
        var connections = client.Lines.Where(l => l.TryGetProperty("i", out _)).ToList();
        Assert.Equal(3, connections.Count);
        Assert.All(connections, c =>
        {
            Assert.Equal(JsonValueKind.Null, c.GetProperty("error").ValueKind);
            Assert.Equal(1_048_576, c.GetProperty("sent").GetInt64());
            Assert.Equal(Pattern.Sha256(100_000), c.GetProperty("received_sha256").GetString());
        });
        var served = await server.WaitForConnectionsAsync(3);
        Assert.All(served, s => Assert.Equal(Pattern.Sha256(1_048_576), s.GetProperty("sha256").GetString()));
        Assert.Equal(
            connections.Select(c => c.GetProperty("local").GetString()).Order(),
            served.Select(s => s.GetProperty("remote").GetString()).Order());
        var summary = client.Lines[^1];
        Assert.True(summary.GetProperty("summary").GetBoolean());
        Assert.Equal(3, summary.GetProperty("ok").GetInt64());
    }

    [Fact]
    public async Task Echo_ReturnsLargePayloadWhileStillSending()
    {
        await using var server = await InProcessPeer.ServeAsync("echo");

        // 8 MiB is far more than socket buffers hold: the client must read while it writes
        var client = await InProcessPeer.RunAsync("send", "--to", server.Address, "--bytes", "8388608", "--expect-reply-bytes", "8388608");

        Assert.Equal(0, client.ExitCode);
        Assert.Equal(8_388_608, client.Lines[0].GetProperty("received").GetInt64());
    }

    [Fact]
    public async Task Reset_IsReportedAsConnectionReset()
    {
        await using var server = await InProcessPeer.ServeAsync("reset");

        var client = await InProcessPeer.RunAsync("send", "--to", server.Address, "--bytes", "4194304");

        Assert.Equal(1, client.ExitCode);
        Assert.Equal("ConnectionReset", client.Lines[0].GetProperty("error").GetString());
        Assert.Equal(1, client.Lines[^1].GetProperty("failed").GetInt64());
    }

    [Fact]
    public async Task NothingListening_IsReportedAsConnectionRefused()
    {
        int port;
        using (var probe = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp))
        {
            probe.Bind(new IPEndPoint(IPAddress.Loopback, 0));
            port = ((IPEndPoint)probe.LocalEndPoint!).Port;
        }

        var client = await InProcessPeer.RunAsync("send", "--to", $"127.0.0.1:{port}", "--bytes", "10", "--connections", "2");

        Assert.Equal(1, client.ExitCode);
        Assert.All(client.Lines.SkipLast(1), l => Assert.Equal("ConnectionRefused", l.GetProperty("error").GetString()));
        Assert.Equal(2, client.Lines[^1].GetProperty("failed").GetInt64());
    }

    [Fact]
    public async Task AThousandConnections_HeldOpenAtOnce_AllSucceed()
    {
        await using var server = await InProcessPeer.ServeAsync("hash", replyBytes: 10);

        var client = await InProcessPeer.RunAsync(
            "send", "--to", server.Address, "--bytes", "1000", "--connections", "1000", "--concurrency", "1000", "--hold-ms", "1000", "--expect-reply-bytes", "10");

        Assert.Equal(0, client.ExitCode);
        Assert.Equal(1000, client.Lines[^1].GetProperty("ok").GetInt64());
        var served = await server.WaitForConnectionsAsync(1000);
        Assert.Equal(1000, served.Select(s => s.GetProperty("remote").GetString()).Distinct().Count());
    }

    [Fact]
    public async Task RequestResponse_ReportsLatencyPercentiles()
    {
        await using var server = await InProcessPeer.ServeAsync("echo");

        var rr = await InProcessPeer.RunAsync("rr", "--to", server.Address, "--size", "1024", "--count", "500");

        Assert.Equal(0, rr.ExitCode);
        var result = Assert.Single(rr.Lines);
        Assert.Equal(500, result.GetProperty("count").GetInt32());
        Assert.InRange(result.GetProperty("p50_us").GetDouble(), 0.1, 1_000_000);
        Assert.True(result.GetProperty("p99_us").GetDouble() >= result.GetProperty("p50_us").GetDouble());
    }

    [Fact]
    public async Task RequestResponseAtAFixedRate_SpreadsTheRoundTripsOverEveryConnection()
    {
        await using var server = await InProcessPeer.ServeAsync("echo");

        var rr = await InProcessPeer.RunAsync("rr", "--to", server.Address, "--size", "512", "--rate", "200", "--connections", "20", "--seconds", "2");

        Assert.Equal(0, rr.ExitCode);
        var result = Assert.Single(rr.Lines);
        Assert.Equal(400, result.GetProperty("count").GetInt32());
        Assert.Equal(20, result.GetProperty("connections").GetInt32());
        Assert.Equal(0, result.GetProperty("failed_connections").GetInt32());
        // paced, not as fast as it can: the schedule's last round trips start 1.9 s after the first
        Assert.True(result.GetProperty("seconds").GetDouble() >= 1.9, result.ToString());
        Assert.Equal(20, (await server.WaitForConnectionsAsync(20)).Count);
    }

    [Theory]
    [InlineData("fly")]
    [InlineData("send", "--bytes", "10")]
    [InlineData("serve", "--port", "80", "--mode", "teleport")]
    [InlineData("send", "--to")]
    public async Task BadArguments_ExitWithUsageCode(params string[] args)
    {
        var run = await InProcessPeer.RunAsync(args);

        Assert.Equal(2, run.ExitCode);
    }

    private sealed record Run(int ExitCode, IReadOnlyList<JsonElement> Lines);

    private sealed class InProcessPeer : IAsyncDisposable
    {
        private readonly ConcurrentQueue<JsonElement> _lines = new();
        private readonly CancellationTokenSource _stop = new();
        private readonly TaskCompletionSource<string> _listening = new(TaskCreationOptions.RunContinuationsAsynchronously);
        private Task<int> _running = Task.FromResult(0);

        public string Address { get; private set; } = "";

        public static async Task<InProcessPeer> ServeAsync(string mode, long replyBytes = 0)
        {
            var peer = new InProcessPeer();
            peer._running = Task.Run(() => PeerApp.RunAsync(
                ["serve", "--port", "0", "--bind", "127.0.0.1", "--mode", mode, "--reply-bytes", replyBytes.ToString()],
                peer.Add,
                peer._stop.Token));
            peer.Address = await peer._listening.Task.WaitAsync(Timeout);
            return peer;
        }

        public static async Task<Run> RunAsync(params string[] args)
        {
            var lines = new ConcurrentQueue<JsonElement>();
            var code = await PeerApp.RunAsync(args, l => lines.Enqueue(JsonDocument.Parse(l).RootElement.Clone()), CancellationToken.None).WaitAsync(Timeout);
            return new Run(code, lines.ToList());
        }

        public async Task<IReadOnlyList<JsonElement>> WaitForConnectionsAsync(int count)
        {
            var deadline = DateTime.UtcNow + Timeout;
            while (Connections.Count < count && DateTime.UtcNow < deadline)
            {
                await Task.Delay(20);
            }

            return Connections;
        }

        public async ValueTask DisposeAsync()
        {
            _stop.Cancel();
            Assert.Equal(0, await _running.WaitAsync(Timeout));
            _stop.Dispose();
        }

        private List<JsonElement> Connections => _lines.Where(l => l.TryGetProperty("remote", out _)).ToList();

        private void Add(string line)
        {
            var element = JsonDocument.Parse(line).RootElement.Clone();
            _lines.Enqueue(element);
            if (element.TryGetProperty("listening", out var address))
            {
                _listening.TrySetResult(address.GetString()!);
            }
        }
    }
}
