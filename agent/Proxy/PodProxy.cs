using System.Net;
using System.Net.Sockets;
using Weft.Capture;
using Weft.Inventory;
using Weft.Telemetry;

namespace Weft.Proxy;

/// <summary>
/// The agent's listeners inside one enrolled pod's network namespace.
/// <code>
///  app connect(10.96.0.10:80) ─connect4→ 127.0.0.1:15001 ─accept→ original destination from the BPF map
///     → service VIP? pick a ready endpoint → socket made in the pod's netns (SO_MARK) → relay
///  peer SYN to podIP:8080 ─sk_lookup→ 0.0.0.0:15006 ─accept→ getsockname() = podIP:8080
///     → socket made in the pod's netns (SO_MARK) → connect podIP:8080 → relay
/// </code>
/// Sockets belong to the namespace they were made in, so which listener accepted a connection says
/// which pod it came from: identity never rests on a source address.
/// </summary>
internal sealed class PodProxy : IAsyncDisposable
{
    private readonly LocalPod _pod;
    private readonly BpfCapture _capture;
    private readonly InventoryStore _inventory;
    private readonly ConnectionTracker _tracker;
    private readonly ProxyOptions _options;
    private readonly CancellationTokenSource _stop = new();
    private readonly List<Socket> _listeners = [];
    private readonly List<Task> _acceptLoops = [];
    private int _open;

    private PodProxy(LocalPod pod, BpfCapture capture, InventoryStore inventory, ConnectionTracker tracker, ProxyOptions options)
    {
        _pod = pod;
        _capture = capture;
        _inventory = inventory;
        _tracker = tracker;
        _options = options;
    }

    public LocalPod Pod => _pod;

    public Socket InboundListener { get; private set; } = null!;

    /// <summary>Opens the pod's listeners inside its netns and starts accepting.</summary>
    public static PodProxy Start(LocalPod pod, BpfCapture capture, InventoryStore inventory, ConnectionTracker tracker, ProxyOptions options)
    {
        var proxy = new PodProxy(pod, capture, inventory, tracker, options);
        try
        {
            proxy.Listen();
        }
        catch
        {
            proxy.CloseListeners();
            throw;
        }

        return proxy;
    }

    private void Listen()
    {
        var outbound4 = NetNamespace.Run(_pod.NetnsPath, () => Bind(new IPEndPoint(IPAddress.Loopback, _options.OutboundPort)));
        _listeners.Add(outbound4);
        if (_pod.Ipv6 is not null)
        {
            var outbound6 = NetNamespace.Run(_pod.NetnsPath, () => Bind(new IPEndPoint(IPAddress.IPv6Loopback, _options.OutboundPort)));
            _listeners.Add(outbound6);
            _acceptLoops.Add(AcceptLoopAsync(outbound6, inbound: false));
        }

        // One dual-stack inbound listener: sk_lookup hands it v4 and v6 SYNs alike.
        var inbound = NetNamespace.Run(_pod.NetnsPath, () => Bind(new IPEndPoint(IPAddress.IPv6Any, _options.InboundPort), dualMode: true));
        _listeners.Add(inbound);
        InboundListener = inbound;
        _acceptLoops.Add(AcceptLoopAsync(outbound4, inbound: false));
        _acceptLoops.Add(AcceptLoopAsync(inbound, inbound: true));
    }

    private Socket Bind(IPEndPoint endpoint, bool dualMode = false)
    {
        var socket = new Socket(endpoint.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
        try
        {
            if (dualMode)
            {
                socket.DualMode = true;
            }

            socket.SetSocketOption(SocketOptionLevel.Socket, SocketOptionName.ReuseAddress, true);

            // SO_REUSEPORT: a new agent in a rolling update listens beside the old one.
            socket.SetRawSocketOption(SolSocket, SoReusePort, BitConverter.GetBytes(1));
            socket.Bind(endpoint);
            socket.Listen(_options.ListenBacklog);
            return socket;
        }
        catch
        {
            socket.Dispose();
            throw;
        }
    }

    private const int SolSocket = 1;
    private const int SoReusePort = 15;
    private const int SoMark = 36;

    private async Task AcceptLoopAsync(Socket listener, bool inbound)
    {
        while (!_stop.IsCancellationRequested)
        {
            Socket client;
            try
            {
                client = await listener.AcceptAsync(_stop.Token).ConfigureAwait(false);
            }
            catch (OperationCanceledException)
            {
                break;
            }
            catch (ObjectDisposedException)
            {
                break;
            }
            catch (SocketException e)
            {
                Log.Warn("proxy", $"{_pod.Key}: accept failed: {e.SocketErrorCode}");
                continue;
            }

            _ = inbound ? HandleInboundAsync(client) : HandleOutboundAsync(client);
        }
    }

    private async Task HandleOutboundAsync(Socket client)
    {
        var remote = (IPEndPoint)client.RemoteEndPoint!;
        var family = remote.AddressFamily;
        var podAddress = family == AddressFamily.InterNetworkV6 ? _pod.Ipv6 ?? remote.Address : _pod.Ipv4 ?? remote.Address;
        if (!_capture.TryTakeOriginalDestination(_pod.NetnsCookie, (ushort)remote.Port, family, out var original) || original is null)
        {
            // Nothing recorded this connection: it was not captured, so it has no destination to go to.
            Log.Warn("proxy", $"{_pod.Key}: no original destination for client port {remote.Port}");
            RelayPumps.Reset(client);
            return;
        }

        var flow = new Flow(FlowDirection.Outbound, new IPEndPoint(podAddress, remote.Port), original)
        {
            SourceWorkload = _pod.Key,
        };
        var snapshot = _inventory.Current;
        var destination = original;
        if (snapshot.TryResolveService(original, out var target) && target is not null)
        {
            flow.DestinationService = $"{target.Service.Namespace}/{target.Service.Name}";
            var picked = target.Pick();
            if (picked is null)
            {
                flow.ResponseFlags = "UH";
                flow.Error = "service has no ready endpoint";
                Refuse(client, flow);
                return;
            }

            destination = picked;
        }

        flow.Destination = destination;
        flow.DestinationWorkload = snapshot.TryGetWorkload(destination.Address, out var workload) ? $"{workload!.Namespace}/{workload.Name}" : null;
        await ConnectAndRelayAsync(client, destination, flow).ConfigureAwait(false);
    }

    private async Task HandleInboundAsync(Socket client)
    {
        var remote = (IPEndPoint)client.RemoteEndPoint!;
        var local = (IPEndPoint)client.LocalEndPoint!;
        var original = new IPEndPoint(Unmap(local.Address), local.Port);
        var snapshot = _inventory.Current;
        var flow = new Flow(FlowDirection.Inbound, new IPEndPoint(Unmap(remote.Address), remote.Port), original)
        {
            SourceWorkload = snapshot.TryGetWorkload(Unmap(remote.Address), out var source) ? $"{source!.Namespace}/{source.Name}" : null,
            DestinationWorkload = _pod.Key,
            Destination = original,
        };
        await ConnectAndRelayAsync(client, original, flow).ConfigureAwait(false);
    }

    private async Task ConnectAndRelayAsync(Socket client, IPEndPoint destination, Flow flow)
    {
        if (Interlocked.Increment(ref _open) > _options.MaxConnectionsPerPod)
        {
            Interlocked.Decrement(ref _open);
            flow.ResponseFlags = "UO";
            flow.Error = $"more than {_options.MaxConnectionsPerPod} connections open for {_pod.Key}";
            Refuse(client, flow);
            return;
        }

        var connection = new ProxyConnection(flow);
        _tracker.Add(connection);
        Socket? upstream = null;
        try
        {
            upstream = NetNamespace.Run(_pod.NetnsPath, () => new Socket(destination.AddressFamily, SocketType.Stream, ProtocolType.Tcp));
            upstream.SetRawSocketOption(SolSocket, SoMark, BitConverter.GetBytes(_options.SocketMark));
            upstream.NoDelay = true;
            client.NoDelay = true;
            var started = Environment.TickCount64;
            using (var timeout = new CancellationTokenSource(_options.ConnectTimeout))
            {
                try
                {
                    await upstream.ConnectAsync(destination, timeout.Token).ConfigureAwait(false);
                }
                catch (OperationCanceledException)
                {
                    throw new SocketException((int)SocketError.TimedOut);
                }
            }

            flow.ConnectTime = TimeSpan.FromMilliseconds(Environment.TickCount64 - started);
            await connection.RelayAsync(client, upstream).ConfigureAwait(false);
        }
        catch (SocketException e)
        {
            // The destination refused or never answered: the client already has a connection, so it
            // learns of the failure as a reset.
            flow.ResponseFlags = "UF";
            flow.Error = $"connect {destination}: {e.SocketErrorCode}";
            RelayPumps.Reset(client);
        }
        finally
        {
            upstream?.Dispose();
            client.Dispose();
            Interlocked.Decrement(ref _open);
            _tracker.Remove(connection);
        }
    }

    private void Refuse(Socket client, Flow flow)
    {
        RelayPumps.Reset(client);
        _tracker.Flows.Opened(flow);
        _tracker.Flows.Closed(flow);
    }

    private static IPAddress Unmap(IPAddress address) => address.IsIPv4MappedToIPv6 ? address.MapToIPv4() : address;

    private void CloseListeners()
    {
        foreach (var listener in _listeners)
        {
            listener.Dispose();
        }
    }

    /// <summary>Stops accepting; open connections carry on until they end or are drained.</summary>
    public async ValueTask DisposeAsync()
    {
        _stop.Cancel();
        CloseListeners();
        await Task.WhenAll(_acceptLoops).ConfigureAwait(false);
        _stop.Dispose();
    }
}

/// <summary>An enrolled pod on this node as the proxy needs it.</summary>
internal sealed record LocalPod(string Key, string NetnsPath, ulong NetnsCookie, IPAddress? Ipv4, IPAddress? Ipv6, bool FailOpen);
