using System.Collections.Concurrent;
using System.Diagnostics.CodeAnalysis;
using System.Net;
using System.Net.Sockets;
using Weft.Proxy;

namespace Weft.Tests.Proxy;

/// <summary>Original destinations by client port, as connect4 records them; taking one removes it.</summary>
internal sealed class RecordedDestinations : IOriginalDestinations
{
    private readonly ConcurrentDictionary<(ulong Cookie, int Port), IPEndPoint> _byPort = new();

    public void Record(ulong cookie, int clientPort, IPEndPoint destination) => _byPort[(cookie, clientPort)] = destination;

    public bool TryTake(ulong netnsCookie, ushort clientPort, AddressFamily family, [NotNullWhen(true)] out IPEndPoint? destination) =>
        _byPort.TryRemove((netnsCookie, clientPort), out destination);
}

/// <summary>
/// Plain sockets of this process on loopback: every listener is bound to loopback on a port the kernel
/// picks (never to all interfaces, never to a fixed port another run may hold), and connects go where
/// <see cref="Redirect"/> says (e.g. a pod's tunnel port 15008 to the port its listener really got).
/// </summary>
internal sealed class LoopbackPodSockets : IPodSockets
{
    private int _connects;

    /// <summary>Rewrites a connect's destination; identity by default.</summary>
    public Func<IPEndPoint, IPEndPoint> Redirect { get; set; } = destination => destination;

    /// <summary>Connects asked for: from which pod's namespace, to the destination asked for (before any redirect).</summary>
    public ConcurrentQueue<(LocalPod Pod, IPEndPoint Destination)> Connects { get; } = new();

    public int ConnectCount => Volatile.Read(ref _connects);

    public void Prepare(LocalPod pod)
    {
    }

    public Socket Listen(LocalPod pod, IPEndPoint endpoint, bool dualMode, int backlog)
    {
        var address = endpoint.AddressFamily == AddressFamily.InterNetworkV6 ? IPAddress.IPv6Loopback : IPAddress.Loopback;
        var socket = new Socket(endpoint.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
        try
        {
            socket.Bind(new IPEndPoint(address, 0));
            socket.Listen(backlog);
            return socket;
        }
        catch
        {
            socket.Dispose();
            throw;
        }
    }

    /// <summary>Deliveries asked for: the client the app was to be shown, by destination.</summary>
    public ConcurrentQueue<(IPAddress Client, IPEndPoint Destination)> Deliveries { get; } = new();

    /// <summary>Runs before each delivery's connect with its cancellation token, as a slow connect would (none by default).</summary>
    public Func<CancellationToken, Task>? BeforeDelivery { get; set; }

    public async Task<Socket> DeliverAsync(LocalPod pod, IPAddress client, IPEndPoint destination, ProxyOptions options, CancellationToken cancellationToken = default)
    {
        // loopback has no transparent return path: the record says whom the app was meant to see
        Deliveries.Enqueue((client, destination));
        if (BeforeDelivery is { } wait)
        {
            await wait(cancellationToken);
        }

        return await ConnectAsync(pod, destination, options, cancellationToken);
    }

    public void Release(LocalPod pod)
    {
    }

    public async Task<Socket> ConnectAsync(LocalPod pod, IPEndPoint destination, ProxyOptions options, CancellationToken cancellationToken = default)
    {
        Interlocked.Increment(ref _connects);
        Connects.Enqueue((pod, destination));
        var target = Redirect(destination);
        var socket = new Socket(target.AddressFamily, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        try
        {
            await socket.ConnectAsync(target, cancellationToken);
            return socket;
        }
        catch
        {
            socket.Dispose();
            throw;
        }
    }
}
