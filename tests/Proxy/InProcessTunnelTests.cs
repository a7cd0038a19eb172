using System.Net;
using System.Net.Sockets;
using Weft.Hbone;
using Weft.Inventory;
using Weft.Proxy;
using Weft.Telemetry;

namespace Weft.Tests.Proxy;

/// <summary>
/// Two pods' proxies in-process over loopback with a real CA, TLS 1.3 and the HBONE engine: a meshed
/// destination is reached through a tunnel, and the tunnel pool reuses a tunnel only for the same
/// source pod, destination identity and destination address, and closes tunnels nobody uses.
/// </summary>
public sealed class InProcessTunnelTests : IAsyncLifetime
{
    private static readonly LocalPod Client = new("demo", "a1", "client", "client-netns", NetnsCookie: 1, IPAddress.Parse("127.0.0.3"), null, FailOpen: false);
    private static readonly LocalPod Other = new("demo", "a2", "other-client", "client-netns", NetnsCookie: 2, IPAddress.Parse("127.0.0.5"), null, FailOpen: false);
    private static readonly LocalPod Sibling = new("demo", "a3", "client", "sibling-netns", NetnsCookie: 4, IPAddress.Parse("127.0.0.6"), null, FailOpen: false);
    private static readonly LocalPod Server = new("demo", "b1", "server", "server-netns", NetnsCookie: 3, IPAddress.Loopback, null, FailOpen: false);

    private InProcessTunnelRig _rig = null!;
    private FlowTable _clientFlows = null!;
    private FlowTable _serverFlows = null!;
    private RecordedDestinations _destinations = null!;
    private LoopbackPodSockets _clientSockets = null!;
    private LoopbackPodSockets _serverSockets = null!;
    private InventoryStore _inventory = null!;
    private ConnectionTracker _clientTracker = null!;
    private PodProxy _client = null!;
    private PodProxy _other = null!;

    public Task InitializeAsync()
    {
        // b1 at 127.0.0.1 (its proxy serves CONNECTs naming 127.0.0.1); 127.0.0.2 is a second meshed pod
        // with the same identity, and 127.0.0.4 one with another identity; the client pods are a1 and a2.
        _rig = InProcessTunnelRig.Start([Client, Other, Sibling, Server], """
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
            metadata: {name: a2, namespace: demo}
            spec: {nodeName: node1, serviceAccountName: other-client}
            status: {podIP: 127.0.0.5, hostIP: 10.0.0.1}
            ---
            apiVersion: v1
            kind: Pod
            metadata: {name: a3, namespace: demo}
            spec: {nodeName: node1, serviceAccountName: client}
            status: {podIP: 127.0.0.6, hostIP: 10.0.0.1}
            ---
            apiVersion: v1
            kind: Pod
            metadata: {name: b1, namespace: demo}
            spec: {nodeName: node2, serviceAccountName: server}
            status: {podIP: 127.0.0.1, hostIP: 10.0.0.2}
            ---
            apiVersion: v1
            kind: Pod
            metadata: {name: b2, namespace: demo}
            spec: {nodeName: node2, serviceAccountName: server}
            status: {podIP: 127.0.0.2, hostIP: 10.0.0.2}
            ---
            apiVersion: v1
            kind: Pod
            metadata: {name: c1, namespace: demo}
            spec: {nodeName: node2, serviceAccountName: third}
            status: {podIP: 127.0.0.4, hostIP: 10.0.0.2}
            """, new ProxyOptions { ConnectTimeout = TimeSpan.FromSeconds(10) }, Server);
        (_clientFlows, _serverFlows, _destinations) = (_rig.ClientFlows, _rig.ServerFlows, _rig.Destinations);
        (_clientSockets, _serverSockets, _inventory, _clientTracker) = (_rig.ClientSockets, _rig.ServerSockets, _rig.Inventory, _rig.ClientTracker);
        _client = _rig.StartClient(Client);
        _other = _rig.StartClient(Other);
        return Task.CompletedTask;
    }

    public async Task DisposeAsync() => await _rig.DisposeAsync();

    [Fact]
    public async Task MeshedDestination_IsReachedThroughAnMtlsTunnel_RecordedOnBothSidesWithTheirSpiffeIds()
    {
        Assert.Equal("hello over hbone", await RoundTripAsync(_client, Client, "127.0.0.1:8080", "hello over hbone"));

        var outbound = await FinishedAsync(_clientFlows, 1);
        Assert.Equal("-", outbound[0].ResponseFlags);
        Assert.Equal("mutual_tls", outbound[0].SecurityPolicy);
        Assert.Equal("spiffe://cluster.local/ns/demo/sa/client", outbound[0].SourcePrincipal);
        Assert.Equal("spiffe://cluster.local/ns/demo/sa/server", outbound[0].DestinationPrincipal);
        Assert.Equal("demo/b1", outbound[0].DestinationWorkload);
        var inbound = await FinishedAsync(_serverFlows, 1);
        Assert.True(inbound[0].ResponseFlags == "-", $"flags {inbound[0].ResponseFlags}: {inbound[0].Error}");
        Assert.Equal("spiffe://cluster.local/ns/demo/sa/client", inbound[0].SourcePrincipal);
        Assert.Equal(outbound[0].TraceParent, inbound[0].TraceParent);
    }

    [Fact]
    public async Task ClientsFirstBytes_GoWithTheStreamsRequest_AndEveryByteArrivesOnceInOrder()
    {
        // The client sends at once and the tunnel's dial takes far longer than its bytes take to arrive: its first
        // 4 KiB are read before the stream opens and go with the CONNECT, the rest through the relay after the answer.
        var message = Letters(10_000);
        Assert.Equal(message, await RoundTripAsync(_client, Client, "127.0.0.1:8080", message));

        var budget = _rig.ClientServices.Tunnels!.FirstBytesBudget;
        Assert.Equal(1, budget.Carried);
        Assert.Equal(0, budget.Spent);
        Assert.Equal(0, budget.Held);
        var outbound = await FinishedAsync(_clientFlows, 1);
        Assert.Equal((10_000, 10_000), (outbound[0].BytesSent, outbound[0].BytesReceived));
        var inbound = await FinishedAsync(_serverFlows, 1);
        Assert.Equal((10_000, 10_000), (inbound[0].BytesSent, inbound[0].BytesReceived));
    }

    [Fact]
    public async Task FirstBytesBudgetSpent_TheBytesFollowTheAnswer_AndNothingIsLost()
    {
        var sockets = Redirected(new LoopbackPodSockets());
        var services = new ProxyServices(_destinations, sockets, _inventory, _clientTracker,
            new ProxyOptions { ConnectTimeout = TimeSpan.FromSeconds(10), MaxFirstBytesHeld = 0 }, _rig.Identity);
        await using var client = PodProxy.Start(Client, services);
        var message = Letters(10_000);

        Assert.Equal(message, await RoundTripAsync(client, Client, "127.0.0.1:8080", message));

        Assert.Equal(0, services.Tunnels!.FirstBytesBudget.Carried);
        Assert.Equal(1, services.Tunnels.FirstBytesBudget.Spent);
        Assert.Equal(10_000, (await FinishedAsync(_clientFlows, 1))[0].BytesSent);
    }

    [Fact]
    public async Task ClientThatSendsNothingAtFirst_GetsItsStreamOpenedWithoutWaiting()
    {
        // Nothing sent yet (a protocol where the server speaks first): the stream opens at once, and later bytes follow as ever.
        using var client = await ConnectCapturedAsync(_client, Client, "127.0.0.1:8080");
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(30));
        await WaitAsync(() => _clientFlows.Live().Any(f => f.ConnectTime is not null), "the stream to open");
        await client.SendAsync("late"u8.ToArray(), timeout.Token);
        Assert.Equal("late", await ReceiveAsync(client, 4, timeout.Token));

        Assert.Equal(0, _rig.ClientServices.Tunnels!.FirstBytesBudget.Carried);
    }

    private static string Letters(int count) => new(Enumerable.Range(0, count).Select(i => (char)('a' + (i % 26))).ToArray());

    [Fact]
    public async Task SecondConnection_SameSourceDestinationAndAddress_ReusesTheTunnel()
    {
        await RoundTripAsync(_client, Client, "127.0.0.1:8080", "one");
        await RoundTripAsync(_client, Client, "127.0.0.1:8080", "two");

        Assert.Equal(1, TunnelDials());
        Assert.All(await FinishedAsync(_clientFlows, 2), f => Assert.Equal("-", f.ResponseFlags));
    }

    [Fact]
    public async Task AnotherSourceIdentity_GetsATunnelOfItsOwn()
    {
        await RoundTripAsync(_client, Client, "127.0.0.1:8080", "one");
        await RoundTripAsync(_other, Other, "127.0.0.1:8080", "two");

        Assert.Equal(2, TunnelDials());
        Assert.All(await FinishedAsync(_clientFlows, 2), f => Assert.Equal("-", f.ResponseFlags));
    }

    [Fact]
    public async Task AnotherDestinationAddress_SameIdentity_GetsATunnelOfItsOwn()
    {
        await RoundTripAsync(_client, Client, "127.0.0.1:8080", "one");

        // b2's address: its own tunnel, though the listener here is b1's, which refuses a CONNECT for b2.
        await ResetAsync(_client, Client, "127.0.0.2:8080");

        Assert.Equal(2, TunnelDials());
        var refused = (await FinishedAsync(_clientFlows, 2)).Single(f => f.Destination!.Address.Equals(IPAddress.Parse("127.0.0.2")));
        Assert.Equal("CONNECT", refused.ResponseFlags);
    }

    [Fact]
    public async Task AnotherDestinationIdentity_GetsATunnelOfItsOwn_AndAWrongPeerFailsTls()
    {
        await RoundTripAsync(_client, Client, "127.0.0.1:8080", "one");

        // c1 runs as demo/third; the listener here proves demo/server, so the client refuses it.
        await ResetAsync(_client, Client, "127.0.0.4:8080");

        Assert.Equal(2, TunnelDials());
        var refused = (await FinishedAsync(_clientFlows, 2)).Single(f => f.Destination!.Address.Equals(IPAddress.Parse("127.0.0.4")));
        Assert.Equal("TLS_FAILURE", refused.ResponseFlags);
    }

    [Fact]
    public async Task AnotherPod_WithTheSameServiceAccount_DialsATunnelOfItsOwn_FromItsOwnNamespace()
    {
        // One pool for both pods: the key that used to be the service account alone would share a tunnel.
        var sockets = Redirected(new LoopbackPodSockets());
        var services = ClientServices(sockets, TimeSpan.FromMinutes(5));
        await using var client = PodProxy.Start(Client, services);
        await using var sibling = PodProxy.Start(Sibling, services);
        Assert.Equal("one", await RoundTripAsync(client, Client, "127.0.0.1:8080", "one"));
        Assert.Equal("two", await RoundTripAsync(sibling, Sibling, "127.0.0.1:8080", "two"));
        Assert.Equal("three", await RoundTripAsync(client, Client, "127.0.0.1:8080", "three"));

        var dials = sockets.Connects.Where(d => d.Destination.Port == HbonePool.TunnelPort).Select(d => d.Pod.Key).ToList();
        Assert.Equal(["demo/a1", "demo/a3"], dials.Order());
    }

    [Fact]
    public async Task PodThatLeaves_ClosesItsTunnels_AndTheOtherPodKeepsAndReusesItsOwn()
    {
        var sockets = Redirected(new LoopbackPodSockets());
        var services = ClientServices(sockets, TimeSpan.FromMinutes(5));
        var first = PodProxy.Start(Client, services);
        await using var sibling = PodProxy.Start(Sibling, services);
        Assert.Equal("one", await RoundTripAsync(first, Client, "127.0.0.1:8080", "one"));
        Assert.Equal("two", await RoundTripAsync(sibling, Sibling, "127.0.0.1:8080", "two"));
        Assert.Equal(2, services.Tunnels!.OpenTunnels);

        await first.DisposeAsync();

        Assert.Equal(1, services.Tunnels.OpenTunnels);
        Assert.Equal(1, services.Tunnels.IdleClosed);
        Assert.Equal("three", await RoundTripAsync(sibling, Sibling, "127.0.0.1:8080", "three"));
        Assert.Equal(2, TunnelDials(sockets));
    }

    [Fact]
    public async Task IdleTunnel_ClosesAfterTheIdleTimeout_AndTheNextConnectionDialsAFreshOne()
    {
        var sockets = Redirected(new LoopbackPodSockets());
        var services = ClientServices(sockets, TimeSpan.FromMilliseconds(300));
        await using var client = PodProxy.Start(Client, services);
        Assert.Equal("one", await RoundTripAsync(client, Client, "127.0.0.1:8080", "one"));

        await WaitAsync(() => services.Tunnels!.OpenTunnels == 0, "the idle tunnel to close");
        Assert.Equal(1, services.Tunnels!.IdleClosed);

        Assert.Equal("two", await RoundTripAsync(client, Client, "127.0.0.1:8080", "two"));
        Assert.Equal(2, TunnelDials(sockets));
    }

    [Fact]
    public async Task TunnelCarryingAStream_StaysOpenPastTheIdleTimeout()
    {
        var sockets = Redirected(new LoopbackPodSockets());
        var services = ClientServices(sockets, TimeSpan.FromMilliseconds(200));
        await using var client = PodProxy.Start(Client, services);
        using var held = await ConnectCapturedAsync(client, Client, "127.0.0.1:8080");
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(30));
        await held.SendAsync("first"u8.ToArray(), timeout.Token);
        Assert.Equal("first", await ReceiveAsync(held, 5, timeout.Token));

        // Many sweeps later the stream is still there, and so is its tunnel.
        await Task.Delay(TimeSpan.FromSeconds(1.5));
        Assert.Equal(1, services.Tunnels!.OpenTunnels);
        await held.SendAsync("later"u8.ToArray(), timeout.Token);
        Assert.Equal("later", await ReceiveAsync(held, 5, timeout.Token));
        Assert.Equal(0, services.Tunnels.IdleClosed);
    }

    [Fact]
    public async Task LargeEcho_WhileTheClientStopsReadingForASecond_ArrivesWhole_ThenEndsCleanly_CountedOnBothSides()
    {
        // The client sends 24 MiB and reads nothing for a second: the echo's replies back up into the tunnel on
        // both nodes, so each relay's socket stops taking what the tunnel delivers and the rest waits for it
        // (the stream's pipe and its drain), then goes straight to the socket again once it has caught up.
        const int size = 24 * 1024 * 1024;
        var payload = new byte[size];
        new Random(7).NextBytes(payload);
        using var client = await ConnectCapturedAsync(_client, Client, "127.0.0.1:8080");
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(60));

        var send = Task.Run(async () =>
        {
            for (var offset = 0; offset < size; offset += 256 * 1024)
            {
                await client.SendAsync(payload.AsMemory(offset, Math.Min(256 * 1024, size - offset)), timeout.Token);
            }

            client.Shutdown(SocketShutdown.Send);
        });
        await Task.Delay(TimeSpan.FromSeconds(1));

        using var received = new MemoryStream(size);
        var buffer = new byte[64 * 1024];
        int n;
        while ((n = await client.ReceiveAsync(buffer, timeout.Token)) > 0)
        {
            received.Write(buffer, 0, n);
        }

        await send;
        Assert.Equal(size, received.Length);
        Assert.Equal(System.Security.Cryptography.SHA256.HashData(payload), System.Security.Cryptography.SHA256.HashData(received.ToArray()));

        var outbound = await FinishedAsync(_clientFlows, 1);
        var inbound = await FinishedAsync(_serverFlows, 1);
        foreach (var flow in new[] { outbound[0], inbound[0] })
        {
            Assert.Equal("-", flow.ResponseFlags);
            Assert.Equal(size, flow.BytesSent);
            Assert.Equal(size, flow.BytesReceived);
        }
    }

    [Fact]
    public async Task AppThatNeverReads_TheAgentsHoldAtMostTheStreamWindowForIt_AndTheSenderStalls()
    {
        // A peer may push to a pod that reads nothing: the tunnel stream's bytes then wait in the agent only up to the
        // stream window (credit goes back as the app's socket takes them), and the sender stalls instead.
        using var app = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        app.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        app.Listen();
        var accepted = app.AcceptAsync();
        var echo = _serverSockets.Redirect;
        _serverSockets.Redirect = destination => destination.Port == 8081 ? (IPEndPoint)app.LocalEndPoint! : echo(destination);

        const int size = 64 * 1024 * 1024;
        var payload = new byte[size];
        using var client = await ConnectCapturedAsync(_client, Client, "127.0.0.1:8081");
        using var stop = new CancellationTokenSource();
        var send = Task.Run(async () =>
        {
            for (var offset = 0; offset < size; offset += 256 * 1024)
            {
                await client.SendAsync(payload.AsMemory(offset, 256 * 1024), stop.Token);
            }
        });
        using var neverRead = await accepted;

        // Wait until the bytes stop moving: the app's socket is full and the windows are spent.
        long Read() => _clientFlows.Live().Sum(f => f.BytesSent);
        long Delivered() => _serverFlows.Live().Sum(f => f.BytesSent);
        long last = -1;
        for (var i = 0; i < 100 && Read() != last; i++)
        {
            last = Read();
            await Task.Delay(300);
        }

        Assert.False(send.IsCompleted, "64 MiB went into a connection whose app reads nothing");
        Assert.True(Read() > 0 && Delivered() > 0, $"nothing moved: read {Read()}, delivered {Delivered()}");
        var held = Read() - Delivered();
        Assert.True(held <= new HboneSettings().StreamWindow + RelayPumps.CopyBufferSize,
            $"the agents hold {held} bytes of one stream beyond what its app's socket took");
        stop.Cancel();
    }

    [Fact]
    public async Task StreamStillDialingItsApp_WhenTheServerPodsProxyStops_IsDeliveredNotRefused()
    {
        // An agent being replaced stops its pod proxies and drains their tunnels; a CONNECT it took just before
        // (its dial to the app still under way) must be carried, as its peer will not retry it elsewhere.
        var dialing = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var proceed = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        _serverSockets.BeforeDelivery = async token =>
        {
            dialing.TrySetResult();
            await proceed.Task.WaitAsync(token);
        };

        var roundTrip = RoundTripAsync(_client, Client, "127.0.0.1:8080", "carried through the drain");
        await dialing.Task.WaitAsync(TimeSpan.FromSeconds(30));
        await _rig.Server.DisposeAsync();
        proceed.SetResult();

        Assert.Equal("carried through the drain", await roundTrip);
        var inbound = await FinishedAsync(_serverFlows, 1);
        Assert.True(inbound[0].ResponseFlags == "-", $"flags {inbound[0].ResponseFlags}: {inbound[0].Error}");
    }

    private ProxyServices ClientServices(LoopbackPodSockets sockets, TimeSpan tunnelIdle) =>
        new(_destinations, sockets, _inventory, _clientTracker, new ProxyOptions { ConnectTimeout = TimeSpan.FromSeconds(10), TunnelIdleTimeout = tunnelIdle }, _rig.Identity);

    private LoopbackPodSockets Redirected(LoopbackPodSockets sockets)
    {
        sockets.Redirect = _clientSockets.Redirect;
        return sockets;
    }

    private static async Task<string> ReceiveAsync(Socket socket, int length, CancellationToken ct)
    {
        var buffer = new byte[length];
        var read = 0;
        while (read < length)
        {
            var n = await socket.ReceiveAsync(buffer.AsMemory(read), ct);
            Assert.NotEqual(0, n);
            read += n;
        }

        return System.Text.Encoding.UTF8.GetString(buffer);
    }

    private static async Task WaitAsync(Func<bool> condition, string what)
    {
        for (var waited = 0; waited < 300; waited++)
        {
            if (condition())
            {
                return;
            }

            await Task.Delay(100);
        }

        throw new TimeoutException($"waited 30 s for {what}");
    }

    private int TunnelDials() => TunnelDials(_clientSockets);

    private static int TunnelDials(LoopbackPodSockets sockets) => sockets.Connects.Count(d => d.Destination.Port == HbonePool.TunnelPort);

    private async Task<Socket> ConnectCapturedAsync(PodProxy proxy, LocalPod pod, string destination)
    {
        var client = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        client.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        _destinations.Record(pod.NetnsCookie, ((IPEndPoint)client.LocalEndPoint!).Port, IPEndPoint.Parse(destination));
        await client.ConnectAsync(proxy.OutboundListener.LocalEndPoint!);
        return client;
    }

    private async Task<string> RoundTripAsync(PodProxy proxy, LocalPod pod, string destination, string message)
    {
        using var client = await ConnectCapturedAsync(proxy, pod, destination);
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(30));
        var sent = System.Text.Encoding.UTF8.GetBytes(message);
        await client.SendAsync(sent, timeout.Token);
        client.Shutdown(SocketShutdown.Send);
        using var received = new MemoryStream();
        var buffer = new byte[1024];
        int n;
        while ((n = await client.ReceiveAsync(buffer, timeout.Token)) > 0)
        {
            received.Write(buffer, 0, n);
        }

        return System.Text.Encoding.UTF8.GetString(received.ToArray());
    }

    private async Task ResetAsync(PodProxy proxy, LocalPod pod, string destination)
    {
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(30));
        var reset = await Assert.ThrowsAsync<SocketException>(async () =>
        {
            using var client = await ConnectCapturedAsync(proxy, pod, destination);
            await client.ReceiveAsync(new byte[1], timeout.Token);
        });
        Assert.Equal(SocketError.ConnectionReset, reset.SocketErrorCode);
    }

    private static async Task<List<Flow>> FinishedAsync(FlowTable flows, int count)
    {
        for (var waited = 0; waited < 300; waited++)
        {
            var finished = flows.Recent().Where(f => f.End is not null).ToList();
            if (finished.Count >= count)
            {
                return finished;
            }

            await Task.Delay(100);
        }

        throw new TimeoutException($"fewer than {count} finished flows within 30 s");
    }
}
