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
    /// Connects with event args of its own: <c>Socket.ConnectAsync(EndPoint, CancellationToken)</c> leaves its event
    /// args (about 300 bytes) cached on the socket for the socket's life, and a relayed connection would carry them
    /// while it sits idle. Throws <see cref="OperationCanceledException"/> when <paramref name="cancellationToken"/> ends it.
    /// </summary>
    private static async Task ConnectOnceAsync(Socket socket, EndPoint destination, CancellationToken cancellationToken)
    {
        using var args = new SocketAsyncEventArgs { RemoteEndPoint = destination };
        var done = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        args.Completed += (_, _) => done.TrySetResult();
        if (socket.ConnectAsync(args))
        {
            using (cancellationToken.UnsafeRegister(static a => Socket.CancelConnectAsync((SocketAsyncEventArgs)a!), args))
            {
                await done.Task.ConfigureAwait(false);
            }
        }

        if (args.SocketError != SocketError.Success)
        {
            cancellationToken.ThrowIfCancellationRequested();
            throw new SocketException((int)args.SocketError);
        }
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
