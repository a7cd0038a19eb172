using System.Net;
using System.Net.Sockets;
using Weft.Telemetry;

namespace Weft.Proxy;

/// <summary>
/// The agent's listeners inside one enrolled pod's network namespace.
/// <code>
///  127.0.0.1:15001  outbound: connect4 sends the pod's connects here (Outbound.cs, routed by RouteDecision)
///  [::]:15006       inbound plaintext: sk_lookup hands SYNs for the pod's IP here (Inbound.cs, InboundDecision)
///  [::]:15008       inbound HBONE: mTLS + HTTP/2 CONNECT from other agents (Inbound.cs, InboundDecision)
/// </code>
/// Sockets belong to the namespace they were made in, so which listener accepted a connection says
/// which pod it came from: identity never rests on a source address.
/// </summary>
internal sealed partial class PodProxy : IAsyncDisposable
{
    private readonly ProxyServices _services;
    private readonly CancellationTokenSource _stop = new();
    private int _disposed;
    private readonly List<Socket> _listeners = [];
    private readonly List<Task> _acceptLoops = [];
    private int _open;

    private readonly OutboundTunnelEnd _outboundTunnelEnd;
    private readonly PlaintextEnd _plaintextEnd;

    private PodProxy(LocalPod pod, ProxyServices services)
    {
        Pod = pod;
        _services = services;
        _outboundTunnelEnd = new OutboundTunnelEnd(this);
        _plaintextEnd = new PlaintextEnd(this);
    }

    public LocalPod Pod { get; }

    public Socket InboundListener { get; private set; } = null!;

    /// <summary>The HBONE listener (15008); null without a CA.</summary>
    public Socket? TunnelListener { get; private set; }

    /// <summary>The IPv4 outbound listener (127.0.0.1:15001 in the pod).</summary>
    public Socket OutboundListener { get; private set; } = null!;

    private ProxyOptions Options => _services.Options;

    /// <summary>Opens the pod's listeners inside its netns and starts accepting.</summary>
    public static PodProxy Start(LocalPod pod, ProxyServices services)
    {
        var proxy = new PodProxy(pod, services);
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
        _services.Sockets.Prepare(Pod);
        OutboundListener = Bind(new IPEndPoint(IPAddress.Loopback, Options.OutboundPort));
        Socket? outbound6 = Pod.Ipv6 is null ? null : Bind(new IPEndPoint(IPAddress.IPv6Loopback, Options.OutboundPort));

        // One dual-stack inbound listener: sk_lookup hands it v4 and v6 SYNs alike.
        InboundListener = Bind(new IPEndPoint(IPAddress.IPv6Any, Options.InboundPort), dualMode: true);
        var tunnel = TunnelListener = _services.Identity is null ? null : Bind(new IPEndPoint(IPAddress.IPv6Any, HbonePool.TunnelPort), dualMode: true);

        _acceptLoops.Add(AcceptLoopAsync(OutboundListener, HandleOutboundAsync));
        if (outbound6 is not null)
        {
            _acceptLoops.Add(AcceptLoopAsync(outbound6, HandleOutboundAsync));
        }

        _acceptLoops.Add(AcceptLoopAsync(InboundListener, handleInbound: HandlePassthroughAsync));
        if (tunnel is not null)
        {
            _acceptLoops.Add(AcceptLoopAsync(tunnel, handleInbound: HandleTunnelAsync));
        }
    }

    private Socket Bind(IPEndPoint endpoint, bool dualMode = false)
    {
        var socket = _services.Sockets.Listen(Pod, endpoint, dualMode, Options.ListenBacklog);
        _listeners.Add(socket);
        return socket;
    }

    /// <summary>
    /// Accepts until stopped. Outbound connections go to <paramref name="handle"/>; inbound ones are admitted first
    /// (per source, node-wide) and go to <paramref name="handleInbound"/>, which owns the admission from then on.
    /// </summary>
    private async Task AcceptLoopAsync(Socket listener, Func<Socket, Task>? handle = null, Func<Socket, InboundLease, Task>? handleInbound = null)
    {
        var backoff = MinAcceptBackoff;
        while (!_stop.IsCancellationRequested)
        {
            Socket client;
            try
            {
                client = await listener.AcceptAsync(_stop.Token).ConfigureAwait(false);
                backoff = MinAcceptBackoff;
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
                // Out of descriptors (EMFILE/ENFILE) or memory: back off instead of spinning, longer
                // while it lasts (the kernel keeps pending connections in the backlog meanwhile), and
                // say so once per stretch rather than once per try.
                if (backoff == MinAcceptBackoff)
                {
                    Log.Warn("proxy", $"{Pod.Key}: accept failed: {e.SocketErrorCode}; backing off up to {MaxAcceptBackoff.TotalSeconds:0} s until it succeeds");
                }

                try
                {
                    await Task.Delay(backoff, _stop.Token).ConfigureAwait(false);
                }
                catch (OperationCanceledException)
                {
                    break;
                }

                backoff = TimeSpan.FromTicks(Math.Min(backoff.Ticks * 2, MaxAcceptBackoff.Ticks));
                continue;
            }

            // Relayed bytes go out as they come: Nagle would hold small writes back for the peer's
            // delayed ACK (40 ms on Linux), which a proxy in the middle must not add.
            client.NoDelay = true;
            if (handleInbound is null)
            {
                _ = handle!(client);
                continue;
            }

            // Counted before a byte is read, so floods that never finish a handshake are bounded too.
            var source = Unmap(((IPEndPoint)client.RemoteEndPoint!).Address);
            if (_services.Admission.TryAdmitConnection(source) is not { } lease)
            {
                RelayPumps.Reset(client);
                continue;
            }

            _ = handleInbound(client, lease);
        }
    }

    private static readonly TimeSpan MinAcceptBackoff = TimeSpan.FromMilliseconds(50);
    private static readonly TimeSpan MaxAcceptBackoff = TimeSpan.FromSeconds(1);

    /// <summary>Counts a connection against the pod's limit; false (and the caller refuses) when full.</summary>
    private bool TryReserve() => Limit.TryTake(ref _open, Options.MaxConnectionsPerPod);

    private void Release() => Interlocked.Decrement(ref _open);

    private string LimitReason => $"more than {Options.MaxConnectionsPerPod} connections open for {Pod.Key}";

    private ProxyError LimitError => new(ProxyErrorKind.Overflow, LimitReason);

    private static IPAddress Unmap(IPAddress address) => address.IsIPv4MappedToIPv6 ? address.MapToIPv4() : address;

    private void CloseListeners()
    {
        foreach (var listener in _listeners)
        {
            listener.Dispose();
        }
    }

    /// <summary>
    /// Stops accepting; open connections carry on until they end or are drained. The pod's idle tunnels
    /// close now, the others when their last stream ends.
    /// </summary>
    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }

        _stop.Cancel();
        CloseListeners();
        _services.Tunnels?.Release(Pod);
        await Task.WhenAll(_acceptLoops).ConfigureAwait(false);
        _stop.Dispose();
    }
}

/// <summary>An enrolled pod on this node as the proxy needs it.</summary>
internal sealed record LocalPod(string Namespace, string Name, string ServiceAccount, string NetnsPath, ulong NetnsCookie,
    IPAddress? Ipv4, IPAddress? Ipv6, bool FailOpen)
{
    /// <summary><c>namespace/name</c>, the shared instance that flow records keep.</summary>
    public string Key => FlowStrings.Workload(Namespace, Name);

    public IPAddress? AddressFor(AddressFamily family) => family == AddressFamily.InterNetworkV6 ? Ipv6 : Ipv4;
}
