using System.Net;
using System.Net.Sockets;
using Weft.Inventory;
using Weft.Proxy;
using Weft.Telemetry;

namespace Weft.Tests.Proxy;

/// <summary>
/// The proxy core (accept, decide, dial, relay, record) run in-process over loopback sockets: no root,
/// no network namespace, no BPF. The capture's original destinations are what the test records for
/// each client port, as connect4 would.
/// </summary>
public sealed class InProcessProxyTests : IAsyncLifetime
{
    private readonly FlowTable _flows = new();
    private readonly RecordedDestinations _destinations = new();
    private ConnectionTracker _tracker = null!;
    private PodProxy _proxy = null!;
    private Socket _echo = null!;
    private Task _echoing = Task.CompletedTask;

    private static readonly LocalPod Pod = new("demo", "a1", "client", "in-process", NetnsCookie: 7, IPAddress.Loopback, null, FailOpen: false);

    public Task InitializeAsync()
    {
        _echo = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        _echo.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        _echo.Listen();
        _echoing = LoopbackEcho.ServeAsync(_echo);

        // Port 0 everywhere: the kernel picks free loopback ports, so runs side by side never collide.
        var options = new ProxyOptions { OutboundPort = 0, InboundPort = 0, HostPorts = [], ConnectTimeout = TimeSpan.FromSeconds(10) };
        _tracker = new ConnectionTracker(_flows, options.IdleTimeout);
        var services = new ProxyServices(_destinations, new LoopbackPodSockets(), new InventoryStore(), _tracker, options, identity: null);
        _proxy = PodProxy.Start(Pod, services);
        return Task.CompletedTask;
    }

    public async Task DisposeAsync()
    {
        await _proxy.DisposeAsync();
        _tracker.Dispose();
        _echo.Dispose();
        await _echoing;
    }

    [Fact]
    public async Task CapturedConnection_IsRelayedToItsOriginalDestination_AndRecordedAsAForwardedFlow()
    {
        using var client = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        client.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        var clientPort = ((IPEndPoint)client.LocalEndPoint!).Port;
        var echo = (IPEndPoint)_echo.LocalEndPoint!;
        _destinations.Record(Pod.NetnsCookie, clientPort, echo);

        await client.ConnectAsync(OutboundEndpoint);
        var sent = "hello through the proxy core"u8.ToArray();
        await client.SendAsync(sent);
        var received = new byte[sent.Length];
        var read = 0;
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(30));
        while (read < received.Length)
        {
            var n = await client.ReceiveAsync(received.AsMemory(read), timeout.Token);
            Assert.NotEqual(0, n);
            read += n;
        }

        Assert.Equal(sent, received);
        client.Shutdown(SocketShutdown.Send);
        Assert.Equal(0, await client.ReceiveAsync(new byte[1], timeout.Token));

        var flow = await WaitForFinishedFlowAsync();
        Assert.Equal("-", flow.ResponseFlags);
        Assert.Equal(FlowDirection.Outbound, flow.Direction);
        Assert.Equal("demo/a1", flow.SourceWorkload);
        Assert.Equal(clientPort, flow.Source.Port);
        Assert.Equal(echo, flow.Destination);
        Assert.Equal(sent.Length, flow.BytesSent);
        Assert.Equal(sent.Length, flow.BytesReceived);
        Assert.NotEqual("mutual_tls", flow.SecurityPolicy);
    }

    [Fact]
    public async Task ConnectionNothingCaptured_IsReset_AndRecordedAsALoop()
    {
        using var client = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(30));

        // On loopback the reset can arrive before the connect call returns: either way the client sees it.
        var reset = await Assert.ThrowsAsync<SocketException>(async () =>
        {
            await client.ConnectAsync(OutboundEndpoint, timeout.Token);
            await client.ReceiveAsync(new byte[1], timeout.Token);
        });
        Assert.Equal(SocketError.ConnectionReset, reset.SocketErrorCode);

        var flow = await WaitForFinishedFlowAsync();
        Assert.Equal("LOOP", flow.ResponseFlags);
        Assert.Contains("no captured destination", flow.Error);
    }

    [Fact]
    public async Task DestinationThatRefuses_IsRecordedUF_AndTheClientIsReset()
    {
        // A port that was free a moment ago: nothing listens on it.
        IPEndPoint closed;
        using (var probe = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp))
        {
            probe.Bind(new IPEndPoint(IPAddress.Loopback, 0));
            closed = (IPEndPoint)probe.LocalEndPoint!;
        }

        using var client = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        client.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        _destinations.Record(Pod.NetnsCookie, ((IPEndPoint)client.LocalEndPoint!).Port, closed);
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(30));
        var reset = await Assert.ThrowsAsync<SocketException>(async () =>
        {
            await client.ConnectAsync(OutboundEndpoint, timeout.Token);
            await client.ReceiveAsync(new byte[1], timeout.Token);
        });
        Assert.Equal(SocketError.ConnectionReset, reset.SocketErrorCode);

        var flow = await WaitForFinishedFlowAsync();
        Assert.Equal("UF", flow.ResponseFlags);
        Assert.Equal($"connect {closed}: ConnectionRefused", flow.Error);
    }

    private IPEndPoint OutboundEndpoint => (IPEndPoint)_proxy.OutboundListener.LocalEndPoint!;

    private async Task<Flow> WaitForFinishedFlowAsync()
    {
        for (var waited = 0; waited < 300; waited++)
        {
            if (_flows.Recent().FirstOrDefault(f => f.End is not null) is { } flow)
            {
                return flow;
            }

            await Task.Delay(100);
        }

        throw new TimeoutException("no finished flow recorded within 30 s");
    }
}
