using System.Net;
using System.Net.Sockets;
using System.Runtime.CompilerServices;
using Weft.Identity;
using Weft.Inventory;
using Weft.Proxy;
using Weft.Telemetry;
using Weft.Tests.Identity;
using Weft.Tests.Scale;
using Xunit.Abstractions;

namespace Weft.Tests.Proxy;

/// <summary>
/// What a held, idle connection through a tunnel costs the two agents in managed heap, measured in-process against the
/// same connections made directly (the test's own sockets and its echo server cost the same both ways, so the
/// difference is the agents'). Runs alone: another test allocating at the same time would count as ours.
/// </summary>
[Collection(ScaleMemoryCollection.Name)]
public sealed class HeldConnectionMemoryTests(ITestOutputHelper output) : IAsyncLifetime
{
    private const string Domain = "cluster.local";
    private const int Connections = 500;

    /// <summary>
    /// Both agents' heap per held connection, the tunnels' managed share included (100 streams each): about 4,050 bytes
    /// measured here (docs/benchmark.md). A relay that waited in a .NET receive again would add about 640 bytes per side.
    /// </summary>
    private const int BudgetBytes = 4_600;

    private static readonly LocalPod Client = new("demo", "a1", "client", "client-netns", NetnsCookie: 1, IPAddress.Parse("127.0.0.3"), null, FailOpen: false);
    private static readonly LocalPod Server = new("demo", "b1", "server", "server-netns", NetnsCookie: 3, IPAddress.Loopback, null, FailOpen: false);

    private readonly TempDir _dir = new();
    private readonly RecordedDestinations _destinations = new();
    private readonly FlowTable _clientFlows = new();
    private readonly FlowTable _serverFlows = new();
    private IdentityManager _identity = null!;
    private ConnectionTracker _clientTracker = null!;
    private ConnectionTracker _serverTracker = null!;
    private PodProxy _client = null!;
    private PodProxy _server = null!;
    private Socket _echo = null!;
    private readonly StrongBox<int> _echoing = new();

    public Task InitializeAsync()
    {
        _identity = IdentityManager.Start(new IdentityOptions(Domain, TestCa.Root("root").WriteTo(_dir.Path)) { WatchFiles = false, CheckInterval = TimeSpan.FromHours(1) });
        _identity.SetAllowed([new SpiffeId(Domain, "demo", "client"), new SpiffeId(Domain, "demo", "server")]);
        _echo = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        _echo.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        _echo.Listen(Connections);
        _ = LoopbackEcho.ServeAsync(_echo, _echoing);

        var inventory = new InventoryStore();
        inventory.Publish(InventoryBuilder.Build(InventoryYaml.Load("""
            apiVersion: v1
            kind: Namespace
            metadata: {name: demo, labels: {weft.dev/mesh: enabled}}
            ---
            apiVersion: v1
            kind: Pod
            metadata: {name: a1, namespace: demo}
            spec: {nodeName: node1, serviceAccountName: client}
            status: {podIP: 127.0.0.3, hostIP: 10.0.0.1}
            ---
            apiVersion: v1
            kind: Pod
            metadata: {name: b1, namespace: demo}
            spec: {nodeName: node2, serviceAccountName: server}
            status: {podIP: 127.0.0.1, hostIP: 10.0.0.2}
            """, "inventory.yaml")));

        // The inbound limits default to what a 1,024-descriptor agent allows one peer identity (128 streams).
        var options = new ProxyOptions { ConnectTimeout = TimeSpan.FromSeconds(10), Inbound = new InboundLimits(4 * Connections, 4 * Connections, 4 * Connections) };
        var app = (IPEndPoint)_echo.LocalEndPoint!;
        var serverSockets = new LoopbackPodSockets { Redirect = destination => destination.Port == 8080 ? app : destination };
        _serverTracker = new ConnectionTracker(_serverFlows, options.IdleTimeout);
        _server = PodProxy.Start(Server, new ProxyServices(new RecordedDestinations(), serverSockets, inventory, _serverTracker, options, _identity));
        var tunnel = new IPEndPoint(IPAddress.IPv6Loopback, ((IPEndPoint)_server.TunnelListener!.LocalEndPoint!).Port);
        var clientSockets = new LoopbackPodSockets { Redirect = destination => destination.Port == HbonePool.TunnelPort ? tunnel : destination };
        _clientTracker = new ConnectionTracker(_clientFlows, options.IdleTimeout);
        _client = PodProxy.Start(Client, new ProxyServices(_destinations, clientSockets, inventory, _clientTracker, options, _identity));
        return Task.CompletedTask;
    }

    public async Task DisposeAsync()
    {
        await _client.DisposeAsync();
        await _server.DisposeAsync();
        _clientTracker.Dispose();
        _serverTracker.Dispose();
        _echo.Dispose();
        _identity.Dispose();
        _dir.Dispose();
    }

    [Fact]
    public async Task IdleTunnelledConnections_WaitInTheReadWatch_AndCostTheAgentsLittleHeap()
    {
        // Warm: the code run once, the first tunnel's handshake and the echo's first accept are not per connection.
        foreach (var socket in await HoldAsync(Connections, direct: false))
        {
            socket.Dispose();
        }

        await WaitForAsync(Closed, "the warm-up connections to close");

        var (direct, _) = await MeasureAsync(direct: true);
        var watchedBefore = ReadWatch.Shared.Count;
        var (meshed, watched) = await MeasureAsync(direct: false, () => ReadWatch.Shared.Count - watchedBefore);
        var agents = meshed - direct;
        output.WriteLine($"held through the agents {meshed:0} B per connection, directly {direct:0} B: the agents' share {agents:0} B " +
            $"(budget {BudgetBytes}); {watched} registrations in the read watch for {Connections} connections");

        // Each connection's two relays (the client's agent and the server's) wait in the watch, none in a .NET receive.
        Assert.Equal(2 * Connections, watched);
        Assert.InRange(agents, 1, BudgetBytes);
        await WaitForAsync(() => ReadWatch.Shared.Count == watchedBefore, "the closed relays to leave the read watch");
    }

    /// <summary>Heap per held connection, and the read watch's registrations (by <paramref name="watched"/>) while they are held.</summary>
    private async Task<(double PerConnection, int Watched)> MeasureAsync(bool direct, Func<int>? watched = null)
    {
        var before = GC.GetTotalMemory(forceFullCollection: true);
        var held = await HoldAsync(Connections, direct);
        if (!direct)
        {
            await WaitForAsync(() => _serverTracker.Count == Connections, "the server's agent to hold every connection");
        }

        var after = GC.GetTotalMemory(forceFullCollection: true);
        var registrations = watched?.Invoke() ?? 0;
        foreach (var socket in held)
        {
            socket.Dispose();
        }

        await WaitForAsync(Closed, "the held connections to close");
        return ((after - before) / (double)Connections, registrations);
    }

    private bool Closed() => _clientTracker.Count == 0 && _serverTracker.Count == 0 && Volatile.Read(ref _echoing.Value) == 0;

    /// <summary>Opens connections to the echo server (through the client's agent, or directly), each echoing one byte.</summary>
    private async Task<List<Socket>> HoldAsync(int count, bool direct)
    {
        var held = new List<Socket>(count);
        var one = new byte[1];
        for (var i = 0; i < count; i++)
        {
            var socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
            socket.Bind(new IPEndPoint(IPAddress.Loopback, 0));
            if (direct)
            {
                await socket.ConnectAsync(_echo.LocalEndPoint!);
            }
            else
            {
                _destinations.Record(Client.NetnsCookie, ((IPEndPoint)socket.LocalEndPoint!).Port, IPEndPoint.Parse("127.0.0.1:8080"));
                await socket.ConnectAsync(_client.OutboundListener.LocalEndPoint!);
            }

            try
            {
                await socket.SendAsync(one);
                Assert.Equal(1, await socket.ReceiveAsync(one).WaitAsync(TimeSpan.FromSeconds(30)));
            }
            catch (SocketException e)
            {
                var why = string.Join("; ", _clientFlows.Recent().Concat(_serverFlows.Recent()).Where(f => f.Error is not null).Select(f => $"{f.Direction} {f.ResponseFlags} {f.Error}").Distinct().Take(3));
                throw new InvalidOperationException($"connection {i + 1} of {count} ({(direct ? "direct" : "through the agents")}) failed: {e.Message}; flows: {why}", e);
            }

            held.Add(socket);
        }

        return held;
    }

    private static async Task WaitForAsync(Func<bool> condition, string what)
    {
        for (var waited = 0; waited < 300 && !condition(); waited++)
        {
            await Task.Delay(100);
        }

        Assert.True(condition(), $"waited 30 s for {what}");
    }
}
