using System.Net;
using System.Net.Sockets;
using Weft.Capture;

namespace Weft.Proxy;

/// <summary>
/// Sockets the agent opens on a pod's behalf: made inside the pod's netns and claimed as the agent's
/// (<see cref="AgentSockets"/>) before they connect, so capture never takes them.
/// </summary>
internal static class Upstream
{
    // Transparent deliveries tried from a port of the agent's turn before the last one leaves the port to the kernel.
    private const int DeliveryAttempts = 3;

    /// <summary>
    /// Connects from inside the pod (a socket of <see cref="SocketReserve"/>), with the connect timeout; a timeout
    /// surfaces as SocketError.TimedOut. With <paramref name="transparent"/>, from the client's (non-local) address, with a
    /// port of the namespace's <see cref="DeliveryPorts"/>: see <see cref="BindTransparent"/>.
    /// </summary>
    public static async Task<Socket> ConnectAsync(string netnsPath, IPEndPoint destination, ProxyOptions options,
        CancellationToken cancellationToken = default, (IPAddress Client, DeliveryPorts Ports)? transparent = null)
    {
        for (var attempt = 1; ; attempt++)
        {
            var socket = SocketReserve.Take(netnsPath, destination.AddressFamily);
            try
            {
                IPEndPoint? delivery = null;
                if (transparent is var (client, ports))
                {
                    BindTransparent(socket, client, ports, kernelPicks: attempt == DeliveryAttempts);
                    delivery = (IPEndPoint)socket.LocalEndPoint!;
                    MarkDelivery(netnsPath, delivery, destination, add: true);
                }

                using var timeout = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
                timeout.CancelAfter(options.ConnectTimeout);
                try
                {
                    await ConnectOnceAsync(socket, destination, timeout.Token).ConfigureAwait(false);
                }
                catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
                {
                    throw new SocketException((int)SocketError.TimedOut);
                }
                finally
                {
                    // the SYN has been looked up (or the connect failed): the entry has done its work
                    if (delivery is not null)
                    {
                        MarkDelivery(netnsPath, delivery, destination, add: false);
                    }
                }

                return socket;
            }
            catch (SocketException e) when (transparent is not null && e.SocketErrorCode == SocketError.AddressNotAvailable && attempt < DeliveryAttempts)
            {
                // the 4-tuple is taken: the port's last connection to this destination still in TIME_WAIT (the agent
                // closed first less than 60 s ago), or a socket not of this agent's turn holds it; no SYN left
                socket.Dispose();
            }
            catch
            {
                socket.Dispose();
                throw;
            }
        }
    }

    /// <summary>
    /// A non-blocking connect whose wait for the handshake, when it has not ended already, is a one-time wait in
    /// <see cref="ReadWatch.Writable"/>, not a <c>Socket.ConnectAsync</c>: that would leave the socket in .NET's socket
    /// engine's epoll set (edge-triggered, in and out) for its whole life, and the engine's thread would wake for every
    /// segment the connection receives while the agent reads it through <see cref="ReadWatch.Shared"/>
    /// (docs/benchmark.md). It also leaves no event args cached on the socket. Throws <see cref="OperationCanceledException"/>
    /// when <paramref name="cancellationToken"/> ends it.
    /// </summary>
    internal static async Task ConnectOnceAsync(Socket socket, EndPoint destination, CancellationToken cancellationToken)
    {
        socket.Blocking = false;
        try
        {
            socket.Connect(destination);
        }
        catch (SocketException e) when (e.SocketErrorCode is SocketError.InProgress or SocketError.WouldBlock)
        {
            // A connect to an app in the same namespace (every inbound delivery) goes over loopback and has usually
            // ended by the time connect(2) returns, as has one through veths to another node on the same machine: then
            // a poll(2) that does not wait spares the watch's wake-up and the thread-pool hop after it.
            if (!socket.Poll(0, SelectMode.SelectWrite))
            {
                await HandshakeAsync(socket, cancellationToken).ConfigureAwait(false);
            }

            var error = (SocketError)(int)socket.GetSocketOption(SocketOptionLevel.Socket, SocketOptionName.Error)!;
            if (error != SocketError.Success)
            {
                throw new SocketException((int)error);
            }
        }

        // Blocking calls block again as they did after ConnectAsync (.NET keeps the descriptor non-blocking and waits
        // for them itself), and reading Connected is what records the finished connect in the Socket (a poll(2)).
        socket.Blocking = true;
        if (!socket.Connected)
        {
            throw new SocketException((int)SocketError.ConnectionReset);
        }
    }

    /// <summary>Waits once for the connect's end (room to send, an error or a hang-up) in the writable watch, which the socket then leaves.</summary>
    private static async Task HandshakeAsync(Socket socket, CancellationToken cancellationToken)
    {
        var ended = new ConnectEnd();
        var id = ReadWatch.Writable.Register(ended);
        try
        {
            if (!ReadWatch.Writable.Arm(socket, id, first: true))
            {
                throw new ObjectDisposedException(nameof(Socket), "the socket was closed before its connect ended");
            }

            using (cancellationToken.UnsafeRegister(static (ended, token) => ((ConnectEnd)ended!).Done.TrySetCanceled(token), ended))
            {
                await ended.Done.Task.ConfigureAwait(false);
            }
        }
        finally
        {
            ReadWatch.Writable.Leave(socket, id);
        }
    }

    /// <summary>A connect's wait in the writable watch: its continuation runs on the thread pool, not the watch's thread.</summary>
    private sealed class ConnectEnd : IRunOnWatch
    {
        public TaskCompletionSource Done { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

        public void Execute() => Done.TrySetResult();
    }

    private static void MarkDelivery(string netnsPath, IPEndPoint from, IPEndPoint to, bool add)
    {
        try
        {
            AgentSockets.MarkDelivery(from, to, add);
        }
        catch (CaptureException e)
        {
            // without the entry sk_lookup would hand the SYN back to the agent: fail it like a connect
            Log.Warn("proxy", $"{netnsPath}: {e.Message}");
            if (add)
            {
                throw new SocketException((int)(e.Errno == 12 ? SocketError.NoBufferSpaceAvailable : SocketError.SocketError));
            }
        }
    }

    private const int SolIp = 0;
    private const int IpTransparent = 19;
    private const int SolIpv6 = 41;
    private const int Ipv6Transparent = 75;
    private const int SolSocket = 1;
    private const int SoMark = 36;

    /// <summary>
    /// Binds to the client's address, as IP_TRANSPARENT allows for an address that is not the pod's, and marks the
    /// socket so the app's replies come back to it (<see cref="DeliveryReturnPath"/>). An odd port of the agent's
    /// choosing, not the client's port: on the plaintext path the agent's accepted socket already holds the client's
    /// exact 4-tuple in this namespace, and connect() picks even ports, so the delivering socket does not take the
    /// tuple of a client's later connection either (docs/capture.md). With <paramref name="kernelPicks"/>, port 0.
    /// </summary>
    private static void BindTransparent(PodSocket socket, IPAddress from, DeliveryPorts ports, bool kernelPicks)
    {
        Span<byte> on = stackalloc byte[sizeof(int)];
        BitConverter.TryWriteBytes(on, 1);
        if (from.AddressFamily == AddressFamily.InterNetworkV6)
        {
            socket.SetRawSocketOption(SolIpv6, Ipv6Transparent, on);
        }
        else
        {
            socket.SetRawSocketOption(SolIp, IpTransparent, on);
        }

        Span<byte> mark = stackalloc byte[sizeof(uint)];
        BitConverter.TryWriteBytes(mark, DeliveryReturnPath.Mark);
        socket.SetRawSocketOption(SolSocket, SoMark, mark);
        ports.Bind(socket, from, kernelPicks);
    }
}
