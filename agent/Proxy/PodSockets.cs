using System.Collections.Concurrent;
using System.Diagnostics.CodeAnalysis;
using System.Net;
using System.Net.Sockets;
using Weft.Capture;

namespace Weft.Proxy;

/// <summary>
/// Where the proxy gets its sockets: listeners and upstream connections made on a pod's behalf. The
/// agent's are made inside the pod's network namespace (<see cref="NamespaceSockets"/>); the seam lets
/// the proxy core run in-process over plain loopback sockets too.
/// </summary>
internal interface IPodSockets
{
    /// <summary>Readies the pod's namespace for the proxy's listeners (once, before the first <see cref="Listen"/>).</summary>
    void Prepare(LocalPod pod);

    /// <summary>A listening socket on <paramref name="endpoint"/> in the pod's namespace.</summary>
    Socket Listen(LocalPod pod, IPEndPoint endpoint, bool dualMode, int backlog);

    /// <summary>Connects from inside the pod, with the connect timeout; a timeout surfaces as SocketError.TimedOut.</summary>
    Task<Socket> ConnectAsync(LocalPod pod, IPEndPoint destination, ProxyOptions options, CancellationToken cancellationToken = default);

    /// <summary>
    /// Connects to the app in the pod on behalf of <paramref name="client"/>: from the client's own address when the pod's
    /// namespace has the return path for it (transparent delivery), else like <see cref="ConnectAsync"/>.
    /// </summary>
    Task<Socket> DeliverAsync(LocalPod pod, IPAddress client, IPEndPoint destination, ProxyOptions options, CancellationToken cancellationToken = default);

    /// <summary>Undoes <see cref="Prepare"/> when the pod is unenrolled: nothing of the agent's stays in its namespace.</summary>
    void Release(LocalPod pod);
}

/// <summary>Where a captured outbound connection was going (the BPF map connect4 fills).</summary>
internal interface IOriginalDestinations
{
    /// <summary>The destination recorded for the pod's connection from <paramref name="clientPort"/>; taking it removes it.</summary>
    bool TryTake(ulong netnsCookie, ushort clientPort, AddressFamily family, [NotNullWhen(true)] out IPEndPoint? destination);
}

/// <summary>Original destinations as connect4 recorded them in the capture's map.</summary>
internal sealed class CapturedDestinations(BpfCapture capture) : IOriginalDestinations
{
    public bool TryTake(ulong netnsCookie, ushort clientPort, AddressFamily family, [NotNullWhen(true)] out IPEndPoint? destination) =>
        capture.TryTakeOriginalDestination(netnsCookie, clientPort, family, out destination) && destination is not null;
}

/// <summary>The agent's sockets: made inside the pod's network namespace, upstream ones claimed as the agent's.</summary>
internal sealed class NamespaceSockets : IPodSockets
{
    private const int SolSocket = 1;
    private const int SoReusePort = 15;

    public static NamespaceSockets Instance { get; } = new();

    // the namespaces whose return path is set up: delivery there keeps the client's address, from ports of its own
    private readonly ConcurrentDictionary<string, DeliveryPorts> _transparent = new(StringComparer.Ordinal);

    public void Prepare(LocalPod pod)
    {
        NetNamespace.Run(pod.NetnsPath, () => MigrateRequestsOnClose(pod));
        if (DeliveryReturnPath.TryInstall(pod.NetnsPath, pod.Ipv6 is not null, out var error))
        {
            _transparent[pod.NetnsPath] = NetNamespace.Run(pod.NetnsPath, DeliveryPorts.ReadCurrentNamespace);
        }
        else
        {
            _transparent.TryRemove(pod.NetnsPath, out _);
            Log.Warn("proxy", $"{pod.Key}: cannot set up the return path for transparent delivery ({error}); the app will see connections come from its own address");
        }
    }

    public void Release(LocalPod pod)
    {
        _transparent.TryRemove(pod.NetnsPath, out _);
        SocketReserve.Release(pod.NetnsPath);
        DeliveryReturnPath.Remove(pod.NetnsPath);
    }

    /// <summary>
    /// In a rolling update the old agent closes its listeners while the new agent's listen beside
    /// them (SO_REUSEPORT). The kernel resets whatever waits in a closing listener's accept queue
    /// (a client then sees a connected socket reset: measured, 1 in 20 connections opened across the
    /// SIGTERM). With tcp_migrate_req (Linux 5.14+, per network namespace) it hands those queued and
    /// half-open connections to another listener of the group instead. Runs on the pod's netns
    /// thread: /proc/sys/net shows the namespace of the thread that opens it.
    /// </summary>
    private static bool MigrateRequestsOnClose(LocalPod pod)
    {
        try
        {
            File.WriteAllText("/proc/sys/net/ipv4/tcp_migrate_req", "1");
            return true;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            Log.Warn("proxy", $"{pod.Key}: cannot set net.ipv4.tcp_migrate_req ({e.Message}); a rolling update may reset connections queued for the old agent");
            return false;
        }
    }

    public Socket Listen(LocalPod pod, IPEndPoint endpoint, bool dualMode, int backlog)
    {
        var socket = NetNamespace.Run(pod.NetnsPath, () => new Socket(endpoint.AddressFamily, SocketType.Stream, ProtocolType.Tcp));
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
            socket.Listen(backlog);
            return socket;
        }
        catch
        {
            socket.Dispose();
            throw;
        }
    }

    public Task<Socket> ConnectAsync(LocalPod pod, IPEndPoint destination, ProxyOptions options, CancellationToken cancellationToken = default) =>
        Upstream.ConnectAsync(pod.NetnsPath, destination, options, cancellationToken);

    public Task<Socket> DeliverAsync(LocalPod pod, IPAddress client, IPEndPoint destination, ProxyOptions options, CancellationToken cancellationToken = default) =>
        _transparent.TryGetValue(pod.NetnsPath, out var ports) && CanDeliverFrom(pod, client, destination)
            ? Upstream.ConnectAsync(pod.NetnsPath, destination, options, cancellationToken, transparent: (client, ports))
            : Upstream.ConnectAsync(pod.NetnsPath, destination, options, cancellationToken);

    /// <summary>
    /// A client address the app can be shown: of the destination's family, and neither loopback, unspecified nor the
    /// pod's own (those need no transparency; the pod talking to itself keeps its address anyway).
    /// </summary>
    internal static bool CanDeliverFrom(LocalPod pod, IPAddress client, IPEndPoint destination) =>
        client.AddressFamily == destination.AddressFamily
        && !IPAddress.IsLoopback(client)
        && !client.Equals(IPAddress.Any) && !client.Equals(IPAddress.IPv6Any)
        && !client.Equals(pod.Ipv4) && !client.Equals(pod.Ipv6);
}
