using System.Net;
using System.Net.Sockets;
using Weft.Proxy;
using Weft.Tests.Scale;
using Xunit.Abstractions;

namespace Weft.Tests.Proxy;

/// <summary>
/// What a held, idle connection through a tunnel (or in plaintext to an address outside the mesh) costs the agents in
/// managed heap, measured in-process against the same connections made directly (the test's own sockets and its echo
/// server cost the same both ways, so the difference is the agents'). Runs alone: another test allocating at the same
/// time would count as ours.
/// </summary>
[Collection(ScaleMemoryCollection.Name)]
public sealed class HeldConnectionMemoryTests(ITestOutputHelper output) : IAsyncLifetime
{
    private const int Connections = 500;

    /// <summary>The held connections open in this many batches, the heap measured after each (<see cref="MeasureAsync"/>).</summary>
    private const int Batches = 5;

    /// <summary>
    /// Both agents' heap per held connection, the tunnels' managed share included (100 streams each): about 4,050 bytes
    /// measured here (docs/benchmark.md). A relay that waited in a .NET receive again would add about 640 bytes per side.
    /// </summary>
    private const int BudgetBytes = 4_600;

    /// <summary>
    /// The client's agent's heap per held plaintext connection (one relay between two sockets): 1,860 bytes measured here
    /// with this class run alone, up to 2,517 in CI's whole-suite process, where the direct baseline came out 1 KB lower
    /// (5,208 bytes against 6,192: the process's earlier tests change what the echo server's and the test's sockets
    /// allocate, not what the agent holds; through the agent read 7,726 against 8,052). The budget leaves room for that
    /// and still fails a relay that waited in a .NET receive again: about 640 bytes per socket, 1,280 per connection.
    /// </summary>
    private const int PlaintextBudgetBytes = 2_800;

    /// <summary>The tunnelled destination: the server pod's app.</summary>
    private static readonly IPEndPoint Meshed = IPEndPoint.Parse("127.0.0.1:8080");

    /// <summary>A destination outside the mesh (no pod has its address), reached in plaintext: the same echo server.</summary>
    private static readonly IPEndPoint Outside = IPEndPoint.Parse("127.0.0.9:8080");

    private static readonly LocalPod Client = new("demo", "a1", "client", "client-netns", NetnsCookie: 1, IPAddress.Parse("127.0.0.3"), null, FailOpen: false);
    private static readonly LocalPod Server = new("demo", "b1", "server", "server-netns", NetnsCookie: 3, IPAddress.Loopback, null, FailOpen: false);

    private InProcessTunnelRig _rig = null!;
    private PodProxy _client = null!;

    public Task InitializeAsync()
    {
        // The inbound limits default to what a 1,024-descriptor agent allows one peer identity (128 streams).
        var options = new ProxyOptions { ConnectTimeout = TimeSpan.FromSeconds(10), Inbound = new InboundLimits(4 * Connections, 4 * Connections, 4 * Connections) };
        _rig = InProcessTunnelRig.Start([Client, Server], """
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
            """, options, Server);
        _client = _rig.StartClient(Client);
        var echo = (IPEndPoint)_rig.Echo.LocalEndPoint!;
        var tunnels = _rig.ClientSockets.Redirect;
        _rig.ClientSockets.Redirect = destination => destination.Equals(Outside) ? echo : tunnels(destination);
        return Task.CompletedTask;
    }

    public async Task DisposeAsync() => await _rig.DisposeAsync();

    [Fact]
    public async Task IdleTunnelledConnections_WaitInTheReadWatch_AndCostTheAgentsLittleHeap()
    {
        var (meshed, direct, watched, watchedBefore) = await MeasureAgainstDirectAsync(Meshed);
        var agents = meshed - direct;
        output.WriteLine($"held through the agents {meshed:0} B per connection, directly {direct:0} B: the agents' share {agents:0} B " +
            $"(budget {BudgetBytes}); {watched} registrations in the read watch for {Connections} connections");

        // Each connection's two relays (the client's agent and the server's) wait in the watch, none in a .NET receive.
        Assert.Equal(2 * Connections, watched);
        Assert.InRange(agents, 1, BudgetBytes);
        await WaitForAsync(() => ReadWatch.Shared.Count == watchedBefore, "the closed relays to leave the read watch");
    }

    [Fact]
    public async Task IdlePlaintextConnections_WaitInTheReadWatch_AndCostTheAgentLittleHeap()
    {
        var (relayed, direct, watched, watchedBefore) = await MeasureAgainstDirectAsync(Outside);
        var agent = relayed - direct;
        output.WriteLine($"held through the client's agent in plaintext {relayed:0} B per connection, directly {direct:0} B: the agent's share {agent:0} B " +
            $"(budget {PlaintextBudgetBytes}); {watched} registrations in the read watch for {Connections} connections");

        // Each relay waits in the watch with both its sockets (the app's and the upstream), none in a .NET receive.
        Assert.Equal(2 * Connections, watched);
        Assert.Equal(0, _rig.ServerTracker.Count);
        Assert.InRange(agent, 1, PlaintextBudgetBytes);
        await WaitForAsync(() => ReadWatch.Shared.Count == watchedBefore, "the closed relays to leave the read watch");
    }

    /// <summary>
    /// Heap per connection held through the agents to <paramref name="through"/>, and made directly, both after the warm-up;
    /// the read watch's registrations while the first are held, and how many it had before them.
    /// </summary>
    private async Task<(double Through, double Direct, int Watched, int WatchedBefore)> MeasureAgainstDirectAsync(IPEndPoint through)
    {
        await WarmAsync();
        var (direct, _) = await MeasureAsync(through: null);
        var watchedBefore = ReadWatch.Shared.Count;
        var (held, watched) = await MeasureAsync(through, () => ReadWatch.Shared.Count - watchedBefore);
        return (held, direct, watched, watchedBefore);
    }

    /// <summary>
    /// The code run once, the first tunnel's handshake and the echo's first accept are not per connection; nor are the
    /// 64 KiB buffers that the relays' bursts and the tunnels' frame readers leave in the shared array pool, so both
    /// paths are warmed whichever one is measured (warming only one left the other's measurement up to 530 bytes per
    /// connection higher: a few more pooled buffers).
    /// </summary>
    private async Task WarmAsync()
    {
        foreach (var through in new[] { Outside, Meshed, Outside, Meshed })
        {
            foreach (var socket in Hold(Connections, through))
            {
                socket.Dispose();
            }

            await WaitForAsync(Closed, "the warm-up connections to close");
        }
    }

    /// <summary>
    /// Heap per held connection, made directly (<paramref name="through"/> null) or through the client's agent to
    /// <paramref name="through"/>, and the read watch's registrations (by <paramref name="watched"/>) while they are held.
    /// The connections open in <see cref="Batches"/> batches with the heap measured after each; the figure is the median
    /// batch's. One 64 KiB buffer that happens to be out of the shared array pool when the heap is measured moves a
    /// 500-connection total by 131 bytes per connection; in the median it moves nothing unless most batches catch one.
    /// </summary>
    private async Task<(double PerConnection, int Watched)> MeasureAsync(IPEndPoint? through, Func<int>? watched = null)
    {
        var held = new List<Socket>(Connections);
        var perBatch = new List<double>(Batches);
        var before = GC.GetTotalMemory(forceFullCollection: true);
        for (var batch = 0; batch < Batches; batch++)
        {
            held.AddRange(Hold(Connections / Batches, through));
            if (through == Meshed)
            {
                await WaitForAsync(() => _rig.ServerTracker.Count == held.Count, "the server's agent to hold every connection");
            }
            else if (through is not null)
            {
                await WaitForAsync(() => _rig.ClientTracker.Count == held.Count, "the client's agent to hold every connection");
            }

            var after = GC.GetTotalMemory(forceFullCollection: true);
            perBatch.Add((after - before) / (double)(Connections / Batches));
            before = after;
        }

        var registrations = watched?.Invoke() ?? 0;
        foreach (var socket in held)
        {
            socket.Dispose();
        }

        await WaitForAsync(Closed, "the held connections to close");
        perBatch.Sort();
        output.WriteLine($"{(through is null ? "direct" : "through the agents")}, bytes per connection by batch: {string.Join(", ", perBatch.Select(b => b.ToString("0")))}");
        return (perBatch[Batches / 2], registrations);
    }

    private bool Closed() => _rig.ClientTracker.Count == 0 && _rig.ServerTracker.Count == 0 && Volatile.Read(ref _rig.Echoing.Value) == 0;

    /// <summary>Opens connections to the echo server (through the client's agent to <paramref name="through"/>, or directly), each echoing one byte.</summary>
    private List<Socket> Hold(int count, IPEndPoint? through)
    {
        var direct = through is null;
        var held = new List<Socket>(count);
        var one = new byte[1];
        for (var i = 0; i < count; i++)
        {
            var socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
            socket.Bind(new IPEndPoint(IPAddress.Loopback, 0));
            // Blocking calls: the test's own sockets then hold no .NET async state either way. With async calls a reply that
            // was already there when the receive began (more often directly than through the agents) left a socket without
            // the state a waiting receive leaves, about 650 bytes, which counted as the agent's. (CI's whole-suite process
            // still moves the direct baseline for other reasons: PlaintextBudgetBytes.)
            socket.ReceiveTimeout = 30_000;
            if (direct)
            {
                socket.Connect(_rig.Echo.LocalEndPoint!);
            }
            else
            {
                _rig.Destinations.Record(Client.NetnsCookie, ((IPEndPoint)socket.LocalEndPoint!).Port, through!);
                socket.Connect(_client.OutboundListener.LocalEndPoint!);
            }

            try
            {
                socket.Send(one);
                Assert.Equal(1, socket.Receive(one));
            }
            catch (SocketException e)
            {
                var why = string.Join("; ", _rig.ClientFlows.Recent().Concat(_rig.ServerFlows.Recent()).Where(f => f.Error is not null).Select(f => $"{f.Direction} {f.ResponseFlags} {f.Error}").Distinct().Take(3));
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
